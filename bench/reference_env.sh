#!/usr/bin/env bash
# Build the *reference* corruption environment used by bench/corruption_reference.py and
# bench/corruption_speed.py: the PyPI package `imagecorruptions` (the repackaged ImageNet-C
# generator) plus what the CIFAR-10-C generator (hendrycks/robustness, make_cifar_c.py) needs
# (Wand + ImageMagick for its motion_blur and snow). It is a measurement tool, kept outside the
# repository and outside prunegate's own environment.
#
#   usage: bash bench/reference_env.sh [ENV_DIR]        (default /tmp/refenv)
#          PYTHON=/path/to/python3.10 bash bench/reference_env.sh /tmp/refenv
#
# Needs: Python 3.10 (scikit-image 0.19.3, the last release that accepts the reference's
# `multichannel=True`, has no wheels for 3.11+), PyPI, and (as root) Debian's ImageMagick 6
# MagickWand library (installed here with apt-get if it is missing; motion_blur/snow outputs
# depend on the ImageMagick version: bookworm's 6.9.11-60 Q16 is what was measured).
# The hendrycks/robustness generator scripts themselves are not installed here and never live
# in this repository: bench/corruption_reference.py expects local copies in /tmp/hendrycks_ref.
# Every Python package is pinned:
# imagecorruptions 1.1.2 / the 2019 CIFAR-10-C script predate numpy 2 and recent scikit-image.
#   numpy 1.26.4          fog's plasma_fractal uses np.float_ (gone in numpy 2)
#   scikit-image 0.19.3   gaussian(..., multichannel=True) (glass_blur, gaussian_blur) raises
#                         TypeError from 0.20 on; 0.19 accepts it with a FutureWarning
#   scipy 1.11.4          `scipy.ndimage.interpolation` (elastic_transform's import) still exists
#   setuptools 75.8.0     imagecorruptions imports pkg_resources (dropped from setuptools >= 81)
#   opencv-python-headless 4.8.1.78   built against numpy 1.x; headless = no libGL needed
#                         (imagecorruptions asks for opencv-python; same cv2, so it is installed
#                         with --no-deps instead)
#   Pillow 10.4.0, Wand 0.6.13 (ImageMagick 6.9.11 from Debian bookworm)
set -euo pipefail

ENV_DIR="${1:-/tmp/refenv}"
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3.10
  [ -x /root/.pyenv/versions/3.10.13/bin/python ] && PYTHON=/root/.pyenv/versions/3.10.13/bin/python
fi

"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 10), sys.version' \
  || { echo "need Python 3.10 (set PYTHON=...)" >&2; exit 2; }

if ! ldconfig -p | grep -q 'libMagickWand-6.Q16'; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libmagickwand-6.q16-6
  else
    echo "warning: ImageMagick's MagickWand library is missing (apt-get install libmagickwand-6.q16-6);" \
         "the CIFAR-10-C motion_blur/snow reference will not run" >&2
  fi
fi

"$PYTHON" -m venv "$ENV_DIR"
PIP=("$ENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" \
  "numpy==1.26.4" \
  "scipy==1.11.4" \
  "scikit-image==0.19.3" \
  "opencv-python-headless==4.8.1.78" \
  "Pillow==10.4.0" \
  "setuptools==75.8.0" \
  "Wand==0.6.13"
"${PIP[@]}" --no-deps "imagecorruptions==1.1.2"

# Smoke test: every imagecorruptions corruption at severity 5, and Wand's library loads.
"$ENV_DIR/bin/python" - <<'EOF'
import warnings
import numpy as np
warnings.simplefilter("ignore")
from imagecorruptions import corrupt, get_corruption_names
img = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
for name in get_corruption_names("all"):
    out = corrupt(img, corruption_name=name, severity=5)
    assert out.shape == img.shape and out.dtype == np.uint8, name
import wand.image, wand.version
print("reference env ok:", len(get_corruption_names("all")), "corruptions;",
      wand.version.MAGICK_VERSION)
EOF
