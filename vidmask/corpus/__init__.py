"""The motion-shapes corpus: a generated video-text dataset of real mp4 files.

vidmask must run with no data and no model hub, and still show that one
masking strategy beats another. This corpus is built so both matter:

* **semantic coverage**: 1-3 objects per video, each captioned with colour,
  shape, size and motion; a mask that drops an object loses the caption;
* **temporal dynamics**: motions (left/right/up/down, rotate, grow, shrink,
  bounce, enter, leave, still) and counterfactual twins that differ only in
  one object's motion (often its exact time reversal) or colour.

Files follow the public formats (Unmasked Teacher / VINDLU JSON lists, MSRVTT-QA,
DiDeMo paragraphs), so downstream code is the one used on MSR-VTT. See
docs/corpus.md.

Public API::

    make_corpus(out_dir, videos=2000, seed=0, frames=16, size=128, ...) -> Path
    corpus_info(dir) -> dict
    is_corpus(dir) -> bool
    write_contact_sheet(dir, path) -> Path
"""

from vidmask.corpus.make import CorpusConfig, CorpusError, is_corpus, make_corpus
from vidmask.corpus.info import corpus_info, decode_frames, load_corpus, write_contact_sheet

__all__ = [
    "CorpusConfig",
    "CorpusError",
    "corpus_info",
    "decode_frames",
    "is_corpus",
    "load_corpus",
    "make_corpus",
    "write_contact_sheet",
]
