"""`vidmask anno convert|formats|check|index`: the public datasets' annotation files as vidmask annotation
lists, their media checked, and their memory-mapped index built."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("anno", help="convert public datasets' annotation files (MSR-VTT, MSVD, DiDeMo, ActivityNet)",
                       description="vidmask reads UMT/VINDLU annotation lists; this converts the files the "
                       "public datasets ship with into them.")
    jobs = p.add_subparsers(dest="job", metavar="JOB", required=True)
    c = jobs.add_parser(
        "convert", help="convert one released annotation file",
        description="Convert FORMAT's SRC file to a vidmask annotation list at --out. With --video-root, each "
        "entry is matched to its file there (another extension is fine) and entries whose video is missing "
        "are left out and listed (--keep-missing keeps them).",
        epilog="examples:\n"
        "  vidmask anno convert msrvtt train_val_videodatainfo.json --ids MSRVTT_train.9k.csv --out train.json\n"
        "  vidmask anno convert msrvtt-1k MSRVTT_JSFUSION_test.csv --out test_retrieval.json\n"
        "  vidmask anno convert msrvtt-qa train_qa.json --out train_qa.json --answer-list answer_list.json\n"
        "  vidmask anno convert msvd-caption AllVideoDescriptions.txt --mapping youtube_mapping.txt "
        "--split test --out test_caption.json\n"
        "  vidmask anno convert activitynet val_1.json --video-root videos/ --out test_paragraph.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from vidmask.data.public_formats import FORMATS  # standard library only: --help stays fast

    c.add_argument("format", metavar="FORMAT", choices=FORMATS,
                   help=" | ".join(FORMATS) + " (`vidmask anno formats` describes them)")
    c.add_argument("src", metavar="SRC", help="the released annotation file")
    c.add_argument("--out", required=True, help="the vidmask annotation JSON to write")
    c.add_argument("--split", help="msrvtt: train | validate | test (the official split); msvd-caption: "
                   "train | val | test (needs --mapping)")
    c.add_argument("--ids", help="msrvtt: a file of video ids to keep, e.g. CLIP4Clip's MSRVTT_train.9k.csv")
    c.add_argument("--mapping", help="msvd-qa, msvd-caption: MSVD's youtube_mapping.txt")
    c.add_argument("--ext", help="video file extension to write (default: .mp4; MSVD .avi; DiDeMo as in its file)")
    c.add_argument("--video-root", help="folder of the videos: match each entry to its file and report missing ones")
    c.add_argument("--keep-missing", action="store_true", help="with --video-root: keep entries whose video is missing")
    c.add_argument("--answer-list", help="QA formats: also write the most frequent answers here (answer_list.json)")
    c.add_argument("--top", type=int, default=1500, help="answers in --answer-list (default 1500)")
    c.set_defaults(func=run_convert)
    f = jobs.add_parser("formats", help="list the formats convert reads")
    f.set_defaults(func=run_formats)
    k = jobs.add_parser(
        "check", help="read every video of an annotation file once and list the unreadable ones",
        description="Read every distinct video (or image) of ANNO as training reads it (--frames frames, "
        "evaluation's choice of frames) and list the ones that fail, with the reason, and the entries whose "
        "caption is empty; count the entries whose path leaves the media root. Exit code 0 when all read and "
        "every caption is there, 1 when not, 2 for a bad command or annotation file.",
    )
    k.add_argument("anno", metavar="ANNO", help="a vidmask (UMT/VINDLU) annotation JSON file")
    k.add_argument("--video-root", help="folder the entries' paths are relative to (default: ANNO's folder)")
    k.add_argument("--frames", type=int, default=8, help="frames read per video (data.num_frames)")
    k.add_argument("--workers", type=int, default=2, help="reading processes")
    k.add_argument("--whole", action="store_true",
                   help="decode every frame of every video (slower): also finds damage between the sampled frames")
    k.add_argument("--write-clean", metavar="OUT",
                   help="also write ANNO without the entries whose media failed or whose caption is empty")
    k.set_defaults(func=run_check)
    x = jobs.add_parser(
        "index", help="build the memory-mapped store of an annotation file (for corpora of millions of entries)",
        description="Write ANNO's entries as memory-mapped columns (a folder of .npy files), which every rank "
        "and loader worker shares instead of holding its own Python copy of the list. "
        "vidmask.data.load_store(ANNO) builds it on first use beside ANNO (ANNO.index/); this builds it ahead "
        "of time, or somewhere else.",
    )
    x.add_argument("anno", metavar="ANNO", help="a vidmask (UMT/VINDLU) annotation JSON file")
    x.add_argument("--out", help="the store's folder (default: ANNO.index, where load_store looks for it)")
    x.add_argument("--video-root", help="folder the entries' paths are relative to (default: ANNO's folder)")
    x.set_defaults(func=run_index)


def run_formats(args: argparse.Namespace) -> int:
    from vidmask.data.public_formats import FORMAT_HELP

    width = max(map(len, FORMAT_HELP))
    print("\n".join(f"{name:<{width}}  {text}" for name, text in FORMAT_HELP.items()))
    return 0


def _write_json(path, obj) -> None:
    from pathlib import Path

    from vidmask.train.runlog import write_json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(path), obj)  # atomic: a temporary file, then renamed


def run_convert(args: argparse.Namespace) -> int:
    from vidmask.data.annotations import load_annotations
    from vidmask.data.public_formats import QA_FORMATS, answer_list, convert, find_videos

    qa = args.format in QA_FORMATS
    if args.answer_list and not qa:
        print(f"vidmask anno convert: --answer-list is for {' and '.join(QA_FORMATS)}", file=sys.stderr)
        return 2
    entries = convert(args.format, args.src, split=args.split, ids=args.ids, mapping=args.mapping, ext=args.ext)
    if args.video_root:
        found, missing = find_videos(entries, args.video_root)
        if missing:
            what = "kept (they will be counted as bad samples)" if args.keep_missing else "left out"
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            print(f"{len(missing)} of {len(entries)} entries have no video under {args.video_root}; {what}: {shown}",
                  file=sys.stderr)
        if not args.keep_missing:
            entries = found
    _write_json(args.out, entries)
    items = load_annotations(args.out, require_caption=not qa)  # what training will read
    videos = len({str(i.path) for i in items})
    if qa:
        print(f"{args.format}: {len(items)} questions on {videos} videos -> {args.out}")
    else:
        print(f"{args.format}: {videos} videos, {sum(len(i.captions) for i in items)} captions -> {args.out}")
    if args.answer_list:
        answers = answer_list(entries, args.top)
        _write_json(args.answer_list, answers)
        listed = set(answers)
        covered = sum(e["answer"] in listed for e in entries)
        print(f"{len(answers)} answers -> {args.answer_list} (they cover {100 * covered / max(1, len(entries)):.1f} % "
              f"of these questions)")
    return 0


def run_check(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from tqdm import tqdm

    from vidmask.data.annotations import load_annotations
    from vidmask.data.check import check_captions, check_media, outside_root, without_bad

    items = load_annotations(args.anno, args.video_root, require_caption=False)
    root = args.video_root or Path(args.anno).parent
    outside = outside_root(items, root)
    if outside:
        print(f"{len(outside)} of {len(items)} entries point outside the media root {root} (a ../ or absolute path), "
              f"e.g. entry {outside[0]}: {items[outside[0]].path}; they are read from there", file=sys.stderr)
    bad_captions = check_captions(items)
    for b in bad_captions:
        print(f"{args.anno}: entry {b.index} ({b.path}): {b.reason}")
    if bad_captions:
        print(f"{len(bad_captions)} of {len(items)} entries have an empty caption (evaluation refuses them, training "
              "skips them)", file=sys.stderr)
    files = len({str(i.path) for i in items})
    with tqdm(total=files, desc="check", unit="video", dynamic_ncols=True, file=sys.stderr) as bar:
        bad = check_media(items, args.frames, args.workers, progress=bar.update, whole=args.whole)
    for b in bad:
        print(f"{b.path}: {b.reason}")
    print(f"{len(bad)} of {files} media files unreadable ({len(items)} entries in {args.anno})", file=sys.stderr)
    if args.write_clean:
        entries = json.loads(Path(args.anno).read_text(encoding="utf-8-sig"))
        kept = without_bad(entries, items, bad, bad_captions)
        _write_json(args.write_clean, kept)
        print(f"{len(kept)} of {len(entries)} entries -> {args.write_clean}", file=sys.stderr)
    return 1 if bad or bad_captions else 0


def run_index(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from vidmask.data.anno_store import build_store

    out = Path(args.out) if args.out else Path(args.anno + ".index")
    t0 = time.perf_counter()
    store = build_store(args.anno, out, root=args.video_root)
    size = store.nbytes
    print(f"{len(store)} entries, {len(store.texts)} captions, {size / 1e6:.1f} MB "
          f"({size / max(1, len(store)):.0f} bytes per entry) in {time.perf_counter() - t0:.1f} s -> {out}")
    return 0
