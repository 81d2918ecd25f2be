"""The public datasets' annotation files -> vidmask annotation lists (vidmask.data.public_formats, `vidmask anno`).

Each source file is written here in its dataset's released layout, small;
every conversion is read back with load_annotations, as training reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vidmask.cli import main
from vidmask.data import load_annotations
from vidmask.data.annotations import AnnotationError
from vidmask.data.public_formats import FORMATS, answer_list, convert, find_videos, question_type


def write(path: Path, obj) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


@pytest.fixture
def msrvtt_info(tmp_path) -> Path:
    videos = [{"category": 9, "url": "u", "video_id": f"video{i}", "start time": 1.0, "end time": 9.0,
               "split": "train" if i < 3 else ("validate" if i == 3 else "test"), "id": i} for i in range(5)]
    # sentences out of sen_id order: the converter sorts them
    sentences = [{"caption": f"clip {i} sentence {k} ", "video_id": f"video{i}", "sen_id": 10 * i + k}
                 for i in range(5) for k in (1, 0)]
    return write(tmp_path / "train_val_videodatainfo.json", {"info": {}, "videos": videos, "sentences": sentences})


def test_msrvtt_splits_and_id_lists(msrvtt_info, tmp_path):
    train = convert("msrvtt", msrvtt_info, split="train")
    assert [e["video"] for e in train] == ["video0.mp4", "video1.mp4", "video2.mp4"]
    assert train[1]["caption"] == ["clip 1 sentence 0", "clip 1 sentence 1"]
    assert [e["video"] for e in convert("msrvtt", msrvtt_info, split="test")] == ["video4.mp4"]
    ids = write(tmp_path / "MSRVTT_train.9k.csv", "video_id\nvideo4\nvideo0\n")
    assert [e["video"] for e in convert("msrvtt", msrvtt_info, ids=ids)] == ["video0.mp4", "video4.mp4"]
    assert len(convert("msrvtt", msrvtt_info)) == 5
    with pytest.raises(AnnotationError, match="split 'val'.*'validate'"):
        convert("msrvtt", msrvtt_info, split="val")
    with pytest.raises(AnnotationError, match="1 listed video ids are not in the file"):
        convert("msrvtt", msrvtt_info, ids=write(tmp_path / "ids.csv", "video0\nvideo99\n"))


def test_msrvtt_1k_csv(tmp_path):
    src = write(tmp_path / "MSRVTT_JSFUSION_test.csv",
                "key,vid_key,video_id,sentence\nret0,msr7579,video7579,a girl, with a dog\n"
                'ret1,msr7725,video7725,"x, quoted"\n')
    assert convert("msrvtt-1k", src) == [{"video": "video7579.mp4", "caption": "a girl, with a dog"},
                                         {"video": "video7725.mp4", "caption": "x, quoted"}]
    bad = write(tmp_path / "wrong.csv", "a,b\n1,2\n")
    with pytest.raises(AnnotationError, match="wrong.csv: row 2 lacks video_id"):
        convert("msrvtt-1k", bad)


def test_webvid_csv(tmp_path):
    src = write(tmp_path / "results_2M_val.csv",
                "videoid,contentUrl,duration,page_dir,name\n"
                '31353427,https://x/y.mp4,PT00H00M11S,1019_0to60,"Aerial shot, winter forest"\n'
                "8,https://x/z.mp4,PT00H00M20S,,A dog runs \n")
    assert convert("webvid", src) == [{"video": "1019_0to60/31353427.mp4", "caption": "Aerial shot, winter forest"},
                                      {"video": "8.mp4", "caption": "A dog runs"}]
    with pytest.raises(AnnotationError, match="row 2 lacks videoid or name"):
        convert("webvid", write(tmp_path / "other.csv", "id,text\n1,a\n"))


def test_qa_formats_and_answer_list(tmp_path):
    qa = [{"answer": "dog", "id": 7, "question": "What is running?", "video_id": 12, "category_id": 3},
          {"answer": "man", "id": 8, "question": "who sings?", "video_id": 3},
          {"answer": "dog", "id": 9, "question": "what jumps?", "video_id": 3}]
    src = write(tmp_path / "train_qa.json", qa)
    out = convert("msrvtt-qa", src)
    assert out[0] == {"video": "video12.mp4", "question": "What is running?", "answer": "dog",
                      "question_id": 7, "type": "what"}
    assert answer_list(out, 1) == ["dog"] and answer_list(out, 5) == ["dog", "man"]
    mapping = write(tmp_path / "youtube_mapping.txt", "-4wsuPCjDBc_5_15 vid3\nabc_1_2 vid12\n")
    msvd = convert("msvd-qa", src, mapping=mapping)
    assert [e["video"] for e in msvd] == ["abc_1_2.avi", "-4wsuPCjDBc_5_15.avi", "-4wsuPCjDBc_5_15.avi"]
    with pytest.raises(AnnotationError, match="needs MSVD's youtube_mapping.txt"):
        convert("msvd-qa", src)
    short = write(tmp_path / "short_mapping.txt", "abc_1_2 vid12\n")
    with pytest.raises(AnnotationError, match="entry 1: video_id 3 is not in the mapping file"):
        convert("msvd-qa", src, mapping=short)
    assert question_type("  How many cats ") == "how"


def test_activitynet_qa_joins_questions_and_answers(tmp_path):
    q = write(tmp_path / "test_q.json", [{"video_name": "abc", "question": "is he dancing", "question_id": "abc_1"},
                                         {"video_name": "xyz", "question": "what color is it", "question_id": "xyz_2"}])
    write(tmp_path / "test_a.json", [{"question_id": "xyz_2", "answer": "red", "type": 4},
                                     {"question_id": "abc_1", "answer": "yes", "type": 3}])
    assert convert("activitynet-qa", q) == [
        {"video": "v_abc.mp4", "question": "is he dancing", "answer": "yes", "question_id": "abc_1", "type": "yes_no"},
        {"video": "v_xyz.mp4", "question": "what color is it", "answer": "red", "question_id": "xyz_2", "type": "color"}]
    write(tmp_path / "test_a.json", [{"question_id": "abc_1", "answer": "yes", "type": 3}])
    with pytest.raises(AnnotationError, match="test_a.json: no answer for question_id 'xyz_2'"):
        convert("activitynet-qa", q)
    with pytest.raises(AnnotationError, match="expected ActivityNet-QA's questions file"):
        convert("activitynet-qa", tmp_path / "test_a.json")


def test_msvd_captions_and_standard_split(tmp_path):
    lines = ["# MSVD descriptions", "clipA_1_5 a cat plays", "clipB_2_9 a man cooks", "clipA_1_5 a kitten plays", ""]
    src = write(tmp_path / "AllVideoDescriptions.txt", "\n".join(lines))
    assert convert("msvd-caption", src) == [{"video": "clipA_1_5.avi", "caption": ["a cat plays", "a kitten plays"]},
                                            {"video": "clipB_2_9.avi", "caption": ["a man cooks"]}]
    mapping = write(tmp_path / "youtube_mapping.txt", "clipA_1_5 vid1\nclipB_2_9 vid1301\n")
    assert [e["video"] for e in convert("msvd-caption", src, mapping=mapping, split="test")] == ["clipB_2_9.avi"]
    assert [e["video"] for e in convert("msvd-caption", src, mapping=mapping, split="train")] == ["clipA_1_5.avi"]
    with pytest.raises(AnnotationError, match="needs MSVD's youtube_mapping.txt"):
        convert("msvd-caption", src, split="test")


def test_paragraph_formats(tmp_path):
    moments = [{"video": "a.mov", "description": "first moment", "times": [[0, 1]]},
               {"video": "b.mp4", "description": "other video", "times": [[2, 2]]},
               {"video": "a.mov", "description": "second moment ", "times": [[3, 4]]}]
    didemo = write(tmp_path / "test_data.json", moments)
    assert convert("didemo", didemo) == [{"video": "a.mov", "caption": ["first moment", "second moment"]},
                                         {"video": "b.mp4", "caption": ["other video"]}]
    assert convert("didemo", didemo, ext=".mp4")[0]["video"] == "a.mp4"
    anet = write(tmp_path / "val_1.json", {"v_QOlSCBRmfWY": {"duration": 82.7, "timestamps": [[0.8, 19.8], [17, 60]],
                                                            "sentences": ["A woman dances. ", " She spins."]}})
    assert convert("activitynet", anet) == [{"video": "v_QOlSCBRmfWY.mp4", "caption": ["A woman dances.", "She spins."]}]
    with pytest.raises(AnnotationError, match="val_1.json: video v_x lacks \\['sentences'\\]"):
        convert("activitynet", write(tmp_path / "val_1.json", {"v_x": {"duration": 3}}))


def test_wrong_format_or_file_names_the_file(msrvtt_info, tmp_path):
    with pytest.raises(AnnotationError, match="unknown format 'howto100m'"):
        convert("howto100m", msrvtt_info)
    with pytest.raises(AnnotationError, match="no rows; expected WebVid's csv"):
        convert("webvid", msrvtt_info)  # a JSON file given as the csv
    with pytest.raises(AnnotationError, match="train_val_videodatainfo.json: the top level is a list, not an object"):
        convert("activitynet", write(msrvtt_info, []))
    with pytest.raises(AnnotationError, match="missing.json: file not found"):
        convert("msrvtt", tmp_path / "missing.json")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        convert("didemo", write(tmp_path / "broken.json", "[{"))
    with pytest.raises(AnnotationError, match=r"entry 0 lacks \['description'\]"):
        convert("didemo", write(tmp_path / "d.json", [{"video": "a.mp4", "text": "?"}]))


def test_find_videos_matches_other_extensions_and_reports_missing(tmp_path):
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    for name in ("v_a.mp4", "sub/v_b.webm", "v_c.mkv", "v_c.mp4"):
        (root / name).write_bytes(b"x")
    entries = [{"video": "v_a.mp4", "caption": "1"}, {"video": "v_b.mp4", "caption": "2"},
               {"video": "v_d.mp4", "caption": "3"}, {"video": "v_c.avi", "caption": "4"}]
    found, missing = find_videos(entries, root)
    assert [e["video"] for e in found] == ["v_a.mp4", "sub/v_b.webm"]
    assert missing == ["v_d.mp4", "v_c.avi"]  # v_c: two candidates, neither chosen silently
    with pytest.raises(FileNotFoundError, match="video folder not found"):
        find_videos(entries, tmp_path / "nowhere")


def test_cli_convert_writes_what_training_reads(msrvtt_info, tmp_path, capsys):
    root = tmp_path / "videos"
    root.mkdir()
    for i in (0, 1):
        (root / f"video{i}.webm").write_bytes(b"x")
    out = tmp_path / "anno" / "train.json"
    assert main(["anno", "convert", "msrvtt", str(msrvtt_info), "--split", "train", "--out", str(out),
                 "--video-root", str(root)]) == 0
    captured = capsys.readouterr()
    assert "1 of 3 entries have no video under" in captured.err and "video2.mp4" in captured.err
    assert "2 videos, 4 captions" in captured.out
    items = load_annotations(out, root=root)
    assert [i.path.name for i in items] == ["video0.webm", "video1.webm"]
    qa = write(tmp_path / "test_qa.json", [{"answer": "a", "id": 1, "question": "what?", "video_id": 0},
                                           {"answer": "b", "id": 2, "question": "who?", "video_id": 1},
                                           {"answer": "a", "id": 3, "question": "how?", "video_id": 1}])
    answers = tmp_path / "answer_list.json"
    assert main(["anno", "convert", "msrvtt-qa", str(qa), "--out", str(tmp_path / "qa.json"),
                 "--answer-list", str(answers), "--top", "1"]) == 0
    assert json.loads(answers.read_text()) == ["a"]
    assert "3 questions on 2 videos" in capsys.readouterr().out
    # a malformed source file: exit 2 and one line naming it
    assert main(["anno", "convert", "activitynet", str(qa), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "test_qa.json" in err and "not an object of videos" in err and "Traceback" not in err
    assert main(["anno", "formats"]) == 0
    listed = capsys.readouterr().out
    assert all(f in listed for f in FORMATS)
