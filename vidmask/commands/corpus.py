"""`vidmask corpus make|info`: generate and inspect the motion-shapes corpus.

Bad arguments (zero videos, too few frames, a size that is not a multiple of
16, a non-empty output folder without --overwrite) are reported in one line
and exit with status 2, like argparse's own usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "corpus", help="generate or inspect the motion-shapes video-text corpus",
        description="The motion-shapes corpus: generated H.264 videos of moving coloured shapes with "
                    "captions, QA and counterfactual twins, in the UMT/VINDLU annotation format.")
    actions = parser.add_subparsers(dest="corpus_action", metavar="ACTION", required=True)

    make = actions.add_parser("make", help="write a corpus to a folder",
                              description="Write videos/*.mp4, the annotation JSON files and corpus.json "
                                          "(written last: its presence marks a complete corpus).")
    make.add_argument("--out", required=True, help="output folder (must be empty or absent unless --overwrite)")
    make.add_argument("--videos", type=int, default=2000, help="total videos, twins included (default 2000)")
    make.add_argument("--seed", type=int, default=0, help="random seed; same seed and parameters, same corpus")
    make.add_argument("--frames", type=int, default=16, help="frames per video, >= 2 (default 16)")
    make.add_argument("--size", type=int, default=128, help="frame side in px, a multiple of 16 (default 128)")
    make.add_argument("--fps", type=int, default=8, help="frame rate (default 8)")
    make.add_argument("--workers", type=int, default=None, help="worker processes (default: all CPUs)")
    make.add_argument("--twin-share", type=float, default=0.3,
                      help="share of scenes with a counterfactual twin (default 0.3)")
    make.add_argument("--test-share", type=float, default=0.2, help="share of videos held out for test (default 0.2)")
    make.add_argument("--val-share", type=float, default=0.1, help="share of videos for validation (default 0.1)")
    make.add_argument("--crf", type=int, default=20, help="x264 quality, lower is better (default 20)")
    make.add_argument("--overwrite", action="store_true", help="replace the corpus in a non-empty --out folder")
    make.add_argument("--quiet", action="store_true", help="no progress lines")
    make.set_defaults(func=_make)

    info = actions.add_parser("info", help="summarise a corpus and draw a contact sheet",
                              description="Print counts, splits and vocabularies, and write a contact sheet "
                                          "PNG (frames in a row, captions under them).")
    info.add_argument("dir", help="corpus folder (holds corpus.json)")
    info.add_argument("--sheet", default=None, help="contact sheet PNG path (default DIR/contact_sheet.png)")
    info.add_argument("--rows", type=int, default=6, help="videos on the contact sheet (default 6)")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(func=_info)


def _fail(action: str, error: Exception) -> int:
    print(f"vidmask corpus {action}: error: {error}", file=sys.stderr)
    return 2


def _make(args: argparse.Namespace) -> int:
    from vidmask.corpus import CorpusError, make_corpus

    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        out = make_corpus(
            args.out, videos=args.videos, seed=args.seed, frames=args.frames, size=args.size, fps=args.fps,
            twin_share=args.twin_share, test_share=args.test_share, val_share=args.val_share, crf=args.crf,
            workers=args.workers, overwrite=args.overwrite, log=log)
    except CorpusError as error:
        return _fail("make", error)
    print(out)
    return 0


def _info(args: argparse.Namespace) -> int:
    from vidmask.corpus import CorpusError, corpus_info, write_contact_sheet

    try:
        info = corpus_info(args.dir)
        sheet = write_contact_sheet(args.dir, args.sheet or os.path.join(args.dir, "contact_sheet.png"),
                                    videos=args.rows)
    except CorpusError as error:
        return _fail("info", error)
    if args.json:
        print(json.dumps({**info, "contact_sheet": str(sheet)}, indent=1))
        return 0
    p = info["params"]
    print(f"{info['dir']}: {info['generator']} v{info['version']}, seed {p['seed']}, "
          f"{p['frames']} frames of {p['size']}x{p['size']} at {p['fps']} fps")
    print(f"videos      {info['videos']} ({info['scenes']} scenes); splits "
          + ", ".join(f"{k} {v}" for k, v in sorted(info["splits"].items())))
    twins = info["twins"]
    print(f"twins       {twins['pairs']} pairs (" + ", ".join(f"{k} {v}" for k, v in twins.items() if k != "pairs") + ")")
    print("objects     " + ", ".join(f"{k}: {v} videos" for k, v in info["objects_per_video"].items()))
    for key in ("shapes", "colours", "sizes", "motions", "backgrounds"):
        print(f"{key:<12}" + ", ".join(f"{k} {v}" for k, v in info[key].items()))
    caps = info["captions"]
    print(f"captions    {caps['total']} ({caps['per_video']} per video), vocabulary {caps['vocabulary_size']} words:")
    print("            " + " ".join(caps["vocabulary"]))
    qa = info["qa"]
    print("questions   " + ", ".join(f"{k} {v}" for k, v in qa["questions"].items())
          + "; types " + ", ".join(f"{k} {v}" for k, v in qa["types"].items()))
    print(f"answers     {len(qa['answer_list'])} in answer_list.json ({qa['answers_used']} used): "
          + " ".join(qa["answer_list"]))
    print(f"contact sheet: {sheet}")
    return 0
