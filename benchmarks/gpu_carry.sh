#!/usr/bin/env bash
# Gather what benchmarks/gpu_check.sh needs on a GPU machine that has PyTorch but not medtrans's other
# dependencies and cannot reach a package index: wheels for Python 3.12 (.whl/) and a copy of the shared CTs
# and pseudo-pair tool (.gpu_carry/shared/). Both folders are git-ignored; together they stay under 64 MiB
# (SimpleITK's 52 MB wheel travels unpacked and xz-compressed, ~29 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
grep -qx '/.gpu_carry/' .git/info/exclude || echo '/.gpu_carry/' >> .git/info/exclude
rm -rf .whl .gpu_carry && mkdir -p .whl .gpu_carry/shared/data
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
dl() { local dest=$1; shift; python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${plat[@]}" -d "$dest" "$@"; }
dl .whl "monai>=1.4,<1.7" "nibabel>=5.2" "pydicom>=3.0" "isal>=1.6"
rm -rf /tmp/sitk_wheel /tmp/sitk_unpacked && mkdir -p /tmp/sitk_wheel /tmp/sitk_unpacked
dl /tmp/sitk_wheel "SimpleITK>=2.3"
python3 -m zipfile -e /tmp/sitk_wheel/[Ss]imple[Ii][Tt][Kk]-*.whl /tmp/sitk_unpacked
tar -cJf .whl/SimpleITK.tar.xz -C /tmp/sitk_unpacked .
cp -r ../shared/tools .gpu_carry/shared/
for d in tcga_hnsc_ct_downsampled elastix_lung_ct totalsegmentator_examples; do cp -r "../shared/data/$d" .gpu_carry/shared/data/; done
du -sh .whl .gpu_carry
