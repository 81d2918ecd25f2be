"""Captioning metrics through pycocoevalcap (the COCO caption evaluation code).

What is reported, all on a 0-100 scale (pycocoevalcap's numbers x 100, as
papers print them; CIDEr can exceed 100):

* ``CIDEr``: pycocoevalcap's ``Cider``, which implements the CIDEr-D variant
  (Vedantam et al. 2015, sec. 8): tf-idf n-gram vectors for n = 1..4,
  candidate counts clipped to the reference's (``min(hyp, ref)``), a Gaussian
  length penalty with sigma = 6, the mean over n and over references, times
  10; no stemming. The idf comes from the references of the evaluated set
  itself, so CIDEr depends on the whole set (a single clip scores 0: every
  n-gram then has idf log(1) - log(1) = 0).
* ``BLEU-4``: ``Bleu(4)``, corpus-level with the "closest" reference length.
* ``ROUGE-L``: ``Rouge`` (LCS F-measure, beta = 1.2, best reference), mean over clips.
* ``METEOR``: ``Meteor`` (the METEOR 1.5 jar), only when ``java`` is on PATH;
  it starts a JVM (about 6 s on 2 CPU cores).

Tokenization: with ``java`` on PATH, pycocoevalcap's ``PTBTokenizer`` (the
Stanford CoreNLP jar: lower-cases, splits PTB-style, "don't" -> "do n't",
drops punctuation tokens), which is what published numbers use. Without
java, `simple_tokenize`: lower-case, every character that is not a letter,
digit, apostrophe or whitespace becomes a space, whitespace split. It agrees
with PTB on plain captions; it differs on contractions and hyphenated words,
so numbers from the two are not comparable to the last decimal.
``PTBTokenizer`` writes a temporary file next to its jar (inside
site-packages), so that folder must be writable.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Hashable

_NOT_WORD = re.compile(r"[^\w\s']|_")


def java_available() -> bool:
    return shutil.which("java") is not None


def simple_tokenize(caption: str) -> str:
    """The java-free fallback tokenizer: lower-case, punctuation (but ') to spaces, single spaces."""
    return " ".join(_NOT_WORD.sub(" ", caption.lower()).split())


def tokenize(captions: dict[Hashable, list[str]], tokenizer: str = "auto") -> dict[Hashable, list[str]]:
    """{id: [caption, ...]} -> {id: [tokenized caption, ...]} with "ptb", "simple" or "auto" (ptb when java exists)."""
    if tokenizer == "auto":
        tokenizer = "ptb" if java_available() else "simple"
    if tokenizer == "simple":
        return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}
    if tokenizer != "ptb":
        raise ValueError(f"tokenizer must be 'auto', 'ptb' or 'simple', got {tokenizer!r}")
    if not java_available():
        raise RuntimeError("the PTB tokenizer needs java on PATH; use tokenizer='simple'")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # one caption per line for the jar: a newline inside a caption would shift every later one
    wrapped = {k: [{"caption": " ".join(c.split())} for c in v] for k, v in captions.items()}
    out = PTBTokenizer().tokenize(wrapped)
    if any(len(out.get(k, [])) != len(v) for k, v in captions.items()):
        raise RuntimeError("PTBTokenizer returned a different number of captions than it was given")
    return out


def caption_metrics(candidates: dict[Hashable, str], references: dict[Hashable, list[str]],
                    tokenizer: str = "auto", meteor: bool | None = None) -> dict[str, float]:
    """{id: generated caption}, {id: [reference captions]} -> {"CIDEr", "BLEU-4", "ROUGE-L"[, "METEOR"]} x 100.

    Both dicts must have the same ids and every id at least one reference.
    `meteor`: None = when java is on PATH; True requires java.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if set(candidates) != set(references):
        missing = sorted(map(str, set(candidates) ^ set(references)))[:5]
        raise ValueError(f"candidates and references must share their ids; differing: {missing} ...")
    if not candidates:
        raise ValueError("no captions to score")
    if any(len(r) == 0 for r in references.values()):
        raise ValueError("every id needs at least one reference caption")
    ids = list(candidates)
    # one tokenizer call for both sides: PTB starts a JVM per call
    keyed = {("ref", k): list(references[k]) for k in ids} | {("cand", k): [candidates[k]] for k in ids}
    tok = tokenize(keyed, tokenizer)
    gts = {k: tok[("ref", k)] for k in ids}
    res = {k: tok[("cand", k)] for k in ids}
    out = {
        "CIDEr": 100.0 * float(Cider().compute_score(gts, res)[0]),
        "BLEU-4": 100.0 * float(Bleu(4).compute_score(gts, res, verbose=0)[0][3]),
        "ROUGE-L": 100.0 * float(Rouge().compute_score(gts, res)[0]),
    }
    if meteor is None:
        meteor = java_available()
    if meteor:
        if not java_available():
            raise RuntimeError("METEOR needs java on PATH")
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            out["METEOR"] = 100.0 * float(scorer.compute_score(gts, res)[0])
        finally:
            del scorer  # its __del__ stops the JVM
    return out
