#!/bin/sh
# One-shot seeding of an empty deployment (docker-compose service `seed`): Last.fm HetRec 2011 history
# into the event log, then a first model trained and published. The workers start after it and
# restore the log, so every user in it gets a list in Redis. Runs once per data volume.
set -eu
DATA=${MUSICREC_DATA_DIR:-/data}
SEED=${MUSICREC_SEED_DIR:-/seed}
URL=${MUSICREC_SEED_URL:-https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip}
if [ -e "$DATA/.seeded" ]; then
    echo "seed: $DATA was seeded already"
    exit 0
fi
if [ ! -f "$SEED/user_taggedartists.dat" ]; then
    # nothing mounted at $SEED: fetch the GroupLens archive (the files the importer reads)
    mkdir -p "$DATA/seed"
    echo "seed: nothing in $SEED; downloading $URL"
    python -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])" "$URL" "$DATA/seed/lastfm.zip"
    python -m zipfile -e "$DATA/seed/lastfm.zip" "$DATA/seed"
    SEED=$(dirname "$(find "$DATA/seed" -name user_taggedartists.dat | head -n 1)")
fi
musicrec import lastfm-hetrec "$SEED" --out "$DATA/imports"
musicrec import events "$DATA/imports/lastfm-events.parquet"
musicrec import catalog "$DATA/imports/lastfm-catalog.parquet"
musicrec retrain
touch "$DATA/.seeded"
echo "seed: done"
