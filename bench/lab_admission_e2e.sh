#!/bin/bash
# Does a retrained cell model admit the reviewed lab's cells, and only those? Through the real app:
# 50 random wbc-masks dataset1 crops (seed 0) reviewed with import-labels, the other 250 classified
# as crops; 50 BCCD fields, 50 Raabin fields and 40 Taleqani fields (Benign/Pre 401-420) classified
# as fields; their differentials ("outside the model's experience") by the bundled differential
# (parent) and by the retrained, promoted version. docs/retrain.md, "Admitting the reviewed lab".
#   bash bench/lab_admission_e2e.sh ../shared/datasets /tmp/lab-admission
set -e
DATA=$(realpath "$1"); WORK=$(realpath -m "$2")
cd "$(dirname "$0")/.."
rm -rf "$WORK"; mkdir -p "$WORK"
.venv/bin/python - "$DATA" "$WORK" <<'PY'
import random, shutil, sys
from pathlib import Path
data, work = Path(sys.argv[1]), Path(sys.argv[2])
files = sorted((data / "wbc-masks" / "dataset1").rglob("*.bmp"))
random.Random(0).shuffle(files)
for i, f in enumerate(files):
    dst = work / ("rev50" if i < 50 else "rest") / f.parent.name
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(f, dst / f.name)
for name, src in (("bccd50", sorted((data / "bccd-boxes" / "images").iterdir())[10:60]),
                  ("raabin50", sorted((data / "raabin-boxes" / "images").iterdir())[:50]),
                  ("tq", [p for c in ("Benign", "Pre") for p in sorted((data / "all-taleqani" / c).iterdir())[400:420]])):
    (work / name).mkdir()
    for f in src:
        shutil.copy(f, work / name / f.name)
PY
export HEMASCAN_DATA_DIR="$WORK/data"
H=".venv/bin/python -m core"
$H classify "$WORK/rest" --images crops > /dev/null 2>&1
for f in bccd50 raabin50 tq; do $H classify "$WORK/$f" --images fields > /dev/null 2>&1; done
report() { for f in rest bccd50 raabin50 tq; do echo "$f: $($H differential "$WORK/$f" | grep -E 'Not counted')"; done; }
echo "== parent"; report
/usr/bin/time -f "import-labels %e s" $H import-labels --taxonomy wbc_differential "$WORK/rev50" > /dev/null
/usr/bin/time -o "$WORK/retrain.time" -f "retrain %e s, peak RSS %M KB" $H retrain --include-imported --promote --threads 2 2>&1 \
    | grep -E "^promoted|^not promoted" || true
cat "$WORK/retrain.time"
for f in rest bccd50 raabin50 tq; do $H classify "$WORK/$f" > /dev/null 2>&1; done
echo "== retrained"; report
