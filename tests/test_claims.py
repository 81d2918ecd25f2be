"""bench/claims.py: the verdict rules, and a table from finished runs laid out as the leaderboard leaves them."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_claims():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("claims", ROOT / "bench" / "claims.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_verdicts():
    c = load_claims()
    assert c.verdict([]) == c.NOT_RUN and c.verdict([1.0]) == c.ONE_SEED
    assert c.verdict([-1.83, -1.83]) == c.TWO_SEEDS  # equal differences: a zero-width interval is no verdict
    assert c.verdict([2.0, 2.5, 3.0]) == c.HOLDS
    assert c.verdict([-2.0, -2.5, -3.0]) == c.CONTRADICTED
    assert c.verdict([2.0, -1.0, 0.5]) == c.UNRESOLVED
    assert c.verdict([2.0, -1.0, 0.5], tie_ok=True) == c.HOLDS  # "matches": only a clear loss contradicts
    assert c.verdict([-2.0, -2.5, -3.0], tie_ok=True) == c.CONTRADICTED
    assert c.combine([c.HOLDS, c.HOLDS]) == c.HOLDS
    assert c.combine([c.HOLDS, c.UNRESOLVED]) == c.UNRESOLVED
    assert c.combine([c.UNRESOLVED, c.CONTRADICTED]) == c.CONTRADICTED
    assert c.combine([c.CONTRADICTED, c.NOT_RUN]) == c.NOT_RUN


def fake_run(folder: Path, r1: float, motion: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval_all.json").write_text(json.dumps(
        {"t2v": {"R@1": r1, "R@5": 50.0}, "rsum": 300.0, "num_texts": 100, "twins": {"motion": motion, "colour": 99.0}}))
    (folder / "probe.json").write_text(json.dumps({"joint": {"motion": motion / 2, "shape": 20.0, "colour": 99.0}}))
    (folder / "run.json").write_text(json.dumps({"config": {"train": {"batch_size": 32}}}))
    (folder / "metrics.csv").write_text("step,loss,clips_per_s,kept_tokens\n10,1.0,32.0,128\n20,0.9,32.0,128\n")


def test_table_from_finished_runs(tmp_path, monkeypatch):
    c = load_claims()
    monkeypatch.setattr(c, "write", lambda name, title, body: body)
    lb = tmp_path / "lb"
    for seed, (r1, nd) in enumerate([(40.0, 37.0), (42.0, 40.5), (41.0, 39.0)]):
        fake_run(lb / f"clusterstm-s{seed}", r1, 70.0)
        fake_run(lb / f"clusterstm-no-density-s{seed}", nd, 70.0)
        if seed < 2:
            fake_run(lb / f"clusterstm-adjacent-s{seed}", nd + 1.5, 70.0)
    fake_run(lb / "clusterstm-no-relevance-s0", 39.0, 70.0)
    body = c.main(["--lb", str(lb), "--ledger", "", "--mascot", str(tmp_path / "none"), "--mascot-ledger", ""])
    rows = {line.split(" | ")[1]: line for line in body.splitlines() if line.startswith("| ClusterSTM")}
    density = rows["temporal-density selection beats random selection within clusters"]
    assert "+2.17 ± " in density and "(3 seeds)" in density and density.rstrip(" |").endswith("holds")
    assert rows["the relevance reconstruction helps"].rstrip(" |").endswith("one seed")
    adjacent = next(line for name, line in rows.items() if name.startswith("the same, with the summary's"))
    assert "clusterstm-adjacent − clusterstm-no-density, R@1: +1.50" in adjacent and "(2 seeds)" in adjacent
    assert adjacent.rstrip(" |").endswith("two seeds")
    assert rows["intra-frame clustering matters most"].rstrip(" |").endswith("not run")
    assert "not run yet: clusterstm-no-cluster" in rows["intra-frame clustering matters most"]


def test_readme_table_is_replaced_between_its_markers(tmp_path, monkeypatch):
    c = load_claims()
    monkeypatch.setattr(c, "write", lambda name, title, body: body)
    lb = tmp_path / "lb"
    for seed in range(3):
        fake_run(lb / f"clusterstm-s{seed}", 40.0 + seed, 70.0)
        fake_run(lb / f"clusterstm-no-density-s{seed}", 37.0 + seed / 2, 70.0)
    readme = tmp_path / "README.md"
    readme.write_text("# t\n\nbefore\n<!-- claims -->\n| an old | table |\n<!-- /claims -->\nafter\n")
    args = ["--lb", str(lb), "--ledger", "", "--mascot", str(tmp_path / "none"), "--mascot-ledger", ""]
    c.main(args + ["--readme", str(readme)])
    text = readme.read_text()
    assert "an old" not in text and text.startswith("# t\n\nbefore\n<!-- claims -->\n| paper | claim |")
    assert text.endswith("<!-- /claims -->\nafter\n") and text.count("| ClusterSTM |") == 6
    density = next(line for line in text.splitlines() if "temporal-density" in line)
    assert "(3 seeds)" in density and density.rstrip(" |").endswith("holds")
    c.main(args + ["--readme", str(readme)])
    assert readme.read_text() == text  # written twice, the same README
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="<!-- claims -->"):
        c.main(args + ["--readme", str(readme)])


def test_leaderboard_resumes_an_interrupted_run_and_reuses_a_finished_one(tmp_path, monkeypatch):
    load_claims()  # puts bench/ on the path
    import leaderboard

    calls = []

    def fake_vidmask(*args):
        calls.append(args[:2])
        if args[0] == "eval":  # the finished run's files, as eval and probe leave them
            fake_run(tmp_path / "scratch", 40.0, 70.0)
            for name in ("eval_all.json", "probe.json", "run.json", "metrics.csv"):
                (out / name).write_text((tmp_path / "scratch" / name).read_text())
            shutil.rmtree(tmp_path / "scratch")

    monkeypatch.setattr(leaderboard, "vidmask", fake_vidmask)
    out = tmp_path / "random-s0"
    (out / "checkpoints" / "step_000400").mkdir(parents=True)
    (out / "config.yaml").write_text("name: random\n")
    assert leaderboard.last_checkpoint_step(out) == 400
    res = leaderboard.run_recipe("random", 0, 1000, "corpus", out, "teacher.safetensors", [])
    assert calls == [("pretrain", "--resume"), ("eval", "retrieval")]  # resumed, not restarted; probe.json was there
    assert res["R@1"] == 40.0
    calls.clear()
    leaderboard.run_recipe("random", 0, 1000, "corpus", out, "teacher.safetensors", [])
    assert calls == []  # finished: read, not run


def test_two_benches_writing_one_ledger_keep_each_others_records(tmp_path):
    load_claims()  # puts bench/ on the path
    from _ledger import Ledger

    setup = {"steps": 10}
    first, second = Ledger(tmp_path / "lb-runs.json"), Ledger(tmp_path / "lb-runs.json")  # both read it empty
    first.put("motion-s0", setup, {"R@1": 1.0})
    second.put("motion-s1", setup, {"R@1": 2.0})  # the other process's record is read again, not overwritten
    first.put("motion-s2", setup, {"R@1": 3.0})
    again = Ledger(tmp_path / "lb-runs.json")
    assert {k: again.get(k, setup) for k in again.records} == {
        "motion-s0": {"R@1": 1.0}, "motion-s1": {"R@1": 2.0}, "motion-s2": {"R@1": 3.0}}
    assert not list(tmp_path.glob("*.tmp"))


def test_leaderboard_ledger_carries_finished_runs_to_a_fresh_clone(tmp_path, monkeypatch):
    """A finished run's figures go into the ledger; with its folder gone (another machine) the same setup
    reuses them without training, another setup trains again, and claims.py reads them."""
    c = load_claims()
    import leaderboard
    from _ledger import Ledger

    calls = []

    def fake_vidmask(*args):
        calls.append(args[:2])
        if args[0] == "pretrain":
            out = Path(next(a for a in args if a.startswith("run_dir=")).split("=", 1)[1])
            fake_run(out, 40.0 + len(calls), 70.0)
            (out / "eval_all.json").unlink()  # as pretrain leaves it: evaluated below
            (out / "config.yaml").write_text("name: random\n")
        elif args[0] == "eval":
            run = Path(args[args.index("--run") + 1])
            (run / "eval_all.json").write_text(json.dumps(
                {"t2v": {"R@1": 41.0, "R@5": 50.0}, "rsum": 300.0, "num_texts": 100,
                 "twins": {"motion": 70.0, "colour": 99.0}}))

    monkeypatch.setattr(leaderboard, "vidmask", fake_vidmask)
    ledger = Ledger(tmp_path / "lb-runs.json")
    setup = {"steps": 1000, "losses": "core", "set": [], "curve_every": 0, "corpus": "abc"}
    out = tmp_path / "runs" / "random-s0"
    first = leaderboard.run_recipe("random", 0, 1000, "corpus", out, "teacher.safetensors", [],
                                   ledger=ledger, setup=setup)
    assert [c_[0] for c_ in calls] == ["pretrain", "eval"] and first["R@1"] == 41.0
    assert json.loads(ledger.path.read_text())["random-s0"]["setup"] == setup

    shutil.rmtree(tmp_path / "runs")  # a fresh clone: no run folder, the ledger committed
    calls.clear()
    again = leaderboard.run_recipe("random", 0, 1000, "corpus", out, "teacher.safetensors", [],
                                   ledger=Ledger(ledger.path), setup=setup)
    assert calls == [] and again == json.loads(json.dumps(first))
    other = {**setup, "set": ["model.tubelet=2"]}
    assert Ledger(ledger.path).other_setup("random-s0", other)
    leaderboard.run_recipe("random", 0, 1000, "corpus", out, "teacher.safetensors", [],
                           ledger=Ledger(ledger.path), setup=other)
    assert [c_[0] for c_ in calls] == ["pretrain", "eval"]  # trained again under the other setup

    # claims.py: the ledger's figures under its most common setup fill the seeds that have no folder
    led = Ledger(tmp_path / "claims-runs.json")
    for seed, (r1, nd) in enumerate([(40.0, 37.0), (42.0, 40.5), (41.0, 39.0)]):
        led.put(f"clusterstm-s{seed}", setup, {"R@1": r1, "motion": 70.0})
        led.put(f"clusterstm-no-density-s{seed}", setup, {"R@1": nd, "motion": 70.0})
    led.put("clusterstm-no-relevance-s0", other, {"R@1": 10.0, "motion": 70.0})  # another setup: left out
    monkeypatch.setattr(c, "write", lambda name, title, body: body)
    body = c.main(["--lb", str(tmp_path / "none"), "--ledger", str(led.path), "--mascot", str(tmp_path / "none"),
                   "--mascot-ledger", ""])
    rows = {line.split(" | ")[1]: line for line in body.splitlines() if line.startswith("| ClusterSTM")}
    assert "+2.17 ± " in rows["temporal-density selection beats random selection within clusters"]
    assert rows["the relevance reconstruction helps"].rstrip(" |").endswith("not run")


def test_ledger_names_a_corrupt_file(tmp_path):
    load_claims()
    from _ledger import Ledger, config_digest, corpus_digest
    import pytest

    a, b, c_ = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "c.yaml"
    a.write_text("# one comment\nmask: {strategy: random, ratio: 0.75}\n")
    b.write_text("mask:\n  ratio: 0.75  # another\n  strategy: random\n")
    c_.write_text("mask: {strategy: random, ratio: 0.9}\n")
    assert config_digest(a) == config_digest(b) != config_digest(c_)  # settings, not comments or layout
    child = tmp_path / "child.yaml"
    child.write_text("base: a.yaml\nname: child\n")
    before = config_digest(child)
    a.write_text("mask: {strategy: random, ratio: 0.5}\n")
    assert config_digest(child) != before  # a recipe that extends another changes with it

    bad = tmp_path / "x-runs.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="x-runs.json: not valid JSON"):
        Ledger(bad)
    with pytest.raises(SystemExit, match="vidmask corpus make"):
        corpus_digest(tmp_path / "nocorpus")


def test_mascot_ledger_reuses_a_finished_run_and_feeds_claims(tmp_path, monkeypatch):
    """bench/mascot.py: a finished fine-tuning run is recorded with its init's weights digest; with its folder
    gone it is not run again; claims.py's MASCOT row reads the records."""
    c = load_claims()
    import mascot
    from _ledger import Ledger

    calls = []

    def fake_train(command, out, *args):
        calls.append(out.name)
        out.mkdir(parents=True)
        r1 = {"mascot_hmask-mascot-low_lweight-0": 30.0, "mascot_hmask-tube_lweight-0": 28.0,
              "mascot_hmask-random_lweight-0": 26.0}.get(out.name.rsplit("-s", 1)[0], 26.0)
        r1 += int(out.name.rsplit("-s", 1)[1])  # seed-dependent, so pairing matters
        (out / "eval_retrieval.json").write_text(json.dumps({"t2v": {"R@1": r1}, "rsum": 300.0}))

    monkeypatch.setattr(mascot, "train_or_resume", fake_train)
    ledger = Ledger(tmp_path / "mascot-runs.json")
    setup = {"init": "runs/x", "init_weights": "w1", "corpus": "abc", "steps": 150, "batch": 8, "lr": 1e-4}
    args = type("A", (), {"corpus": "corpus", "steps": 150, "batch": 8, "lr": 1e-4, "init": "runs/x"})()
    for _, label, config, over in mascot.ROWS:
        if label in ("low-informed 70%", "tube 70%", "random 70%", "high-informed 70%"):
            for seed in (0, 1, 2):
                out = tmp_path / "m" / f"{mascot.run_key(config, over)}-s{seed}"
                mascot.finetune(config, over, seed, args, out, ledger, setup)
    n = len(calls)
    shutil.rmtree(tmp_path / "m")
    key = mascot.run_key(mascot.MASCOT, mascot.masking("mascot-low", 0.7))
    again = mascot.finetune(mascot.MASCOT, mascot.masking("mascot-low", 0.7), 1, args, tmp_path / "m" / f"{key}-s1",
                            Ledger(ledger.path), setup)
    assert len(calls) == n == 12 and again["R@1"] == 31.0
    assert mascot.recorded_init(Ledger(ledger.path), "runs/x") == "w1"  # --only-existing on another machine

    monkeypatch.setattr(c, "write", lambda name, title, body: body)
    body = c.main(["--lb", str(tmp_path / "none"), "--ledger", "", "--mascot", str(tmp_path / "none"),
                   "--mascot-ledger", str(ledger.path)])
    row = next(line for line in body.splitlines() if line.startswith("| MASCOT"))
    assert "low − tube, R@1: +2.00 ± 0.00 (3 seeds)" in row and "tube − random, R@1: +2.00" in row
    assert "high − low, R@1: -4.00" in row and row.rstrip(" |").endswith("contradicted")


    # --name: a table from another init has its own ledger and file (the ledger is keyed by run name)
    (tmp_path / "mascot-motion-runs.json").write_text(ledger.path.read_text())
    written = {}
    monkeypatch.setattr(mascot, "RESULTS", tmp_path)
    monkeypatch.setattr(mascot, "corpus_digest", lambda corpus: "abc")
    monkeypatch.setattr(mascot, "config_digest", lambda *paths: None)
    monkeypatch.setattr(mascot, "write", lambda name, title, body: written.update({name: body}))
    led = Ledger(tmp_path / "mascot-motion-runs.json")
    for rec in led.records.values():
        rec["setup"]["configs"] = None  # what main's setup holds with config_digest patched
    led.path.write_text(json.dumps(led.records))
    monkeypatch.setattr(sys, "argv", ["mascot.py", "--init", "runs/x", "--only-existing", "--name", "mascot-motion",
                                      "--out", str(tmp_path / "m2"), "--rows", "low-informed 70%", "--seeds", "0", "1",
                                      "2"])
    mascot.main()
    assert list(written) == ["mascot-motion.md"]
    # read from the named ledger (3 seeds, no run trained); its twin column has no figures: "-", not a crash
    assert any(line.startswith("| table1 | low-informed 70% | 3 |") and line.rstrip(" |").endswith("| - | 0.0")
               for line in written["mascot-motion.md"].splitlines())


def test_claims_group_recipes_of_one_setup_and_drop_changed_recipes(tmp_path):
    """Each recipe's record carries its own recipe digest: records of one leaderboard are still one setup;
    a record whose recipe file has changed since it ran is left out."""
    c = load_claims()
    from _ledger import Ledger, config_digest

    base = {"steps": 1000, "losses": "core", "set": [], "curve_every": 0, "corpus": "abc"}
    led = Ledger(tmp_path / "runs.json")
    for name in ("clusterstm", "clusterstm-no-density"):
        digest = config_digest(ROOT / "configs" / "recipes" / f"{name}.yaml")
        led.put(f"{name}-s0", {**base, "recipe": digest}, {"R@1": 1.0}, recipe=name)
    led.put("clusterstm-no-relevance-s0", {**base, "recipe": "000000000000"}, {"R@1": 1.0}, recipe="clusterstm-no-relevance")
    assert sorted(c.ledger_figures(led.path)) == ["clusterstm-no-density-s0", "clusterstm-s0"]


def test_readme_claims_table_is_the_committed_ledgers(tmp_path, monkeypatch):
    """The README's claims table is what bench/claims.py makes from the committed ledgers (run folders aside):
    a run recorded without `bench/claims.py --readme` rerun fails here."""
    c = load_claims()
    monkeypatch.setattr(c, "write", lambda name, title, body: body)
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    c.main(["--lb", str(tmp_path / "no-runs"), "--mascot", str(tmp_path / "no-runs"), "--readme", str(readme)])
    assert readme.read_text() == (ROOT / "README.md").read_text(), "run `python bench/claims.py --readme`"


def test_leaderboard_per_seed_table():
    load_claims()
    import leaderboard

    def run(seed, r1, motion):
        return {"seed": seed, "R@1": r1, "motion": motion, "probe_motion": motion / 2, "colour": 99.0,
                "curve": [(200, r1 / 4), (400, r1 / 2)], "step_s": 0.5 + seed}

    results = {"random": [run(0, 20.0, 60.0), run(1, 19.5, 58.0)], "umt": [run(0, 35.5, 77.0)],
               "tube": [run(1, 15.25, 54.0)]}
    rows = {r[0]: r[1:] for r in leaderboard.per_seed(results, "random", [0, 1])}
    assert rows["random"] == ["20.00 / 19.50", "(reference)", "60.0 / 58.0", "30.0 / 29.0", "99.0 / 99.0", "5, 10",
                              "1.00"]
    assert rows["umt"][:3] == ["35.50 / -", "+15.50 / -", "77.0 / -"]  # seed 1 not run yet
    assert rows["tube"][:2] == ["- / 15.25", "- / -4.25"] and rows["tube"][5] == "s1: 3.8125, 7.625"  # no s0
    results["umt"][0]["curve"] = []  # recorded before the ledger kept curves
    assert leaderboard.per_seed(results, "random", [0, 1])[1][6] == "-"
    head = leaderboard.per_seed_head("random", [0, 1], results)
    assert len(head) == len(rows["umt"]) + 1 and "steps 200-400" in head[6] and "(s0 / s1)" in head[1]


def test_leaderboard_refuses_a_run_folder_made_under_another_setup(tmp_path, monkeypatch):
    """A finished or interrupted folder is read or resumed only under the setup it was started with (its
    bench_setup.json; the ledger's record for a folder older than that file), so a changed recipe file or
    --set never files an old run's figures under the new setup."""
    load_claims()
    import leaderboard
    from _ledger import Ledger

    calls = []

    def fake_vidmask(*args):
        calls.append(args[:2])
        if args[0] == "pretrain":
            out = Path(next(a for a in args if a.startswith("run_dir=")).split("=", 1)[1])
            assert json.loads((out / leaderboard.SETUP_FILE).read_text()) == setup  # stamped before training
            fake_run(out, 40.0, 70.0)
            (out / "config.yaml").write_text("name: random\n")

    monkeypatch.setattr(leaderboard, "vidmask", fake_vidmask)
    ledger = Ledger(tmp_path / "lb-runs.json")
    setup = {"steps": 1000, "losses": "core", "set": [], "curve_every": 0, "corpus": "abc", "recipe": "r1"}
    out = tmp_path / "runs" / "random-s0"
    leaderboard.run_recipe("random", 0, 1000, "corpus", out, "t.safetensors", [], ledger=ledger, setup=setup)
    assert calls == [("pretrain", "--config")]
    changed = {**setup, "recipe": "r2"}  # the recipe file's settings changed since
    assert leaderboard.made_under_other_setup(out, changed, ledger)  # --report-only leaves it out
    assert not leaderboard.made_under_other_setup(out, setup, ledger)
    with pytest.raises(SystemExit, match="random-s0: this run folder was made under another setup"):
        leaderboard.run_recipe("random", 0, 1000, "corpus", out, "t.safetensors", [], ledger=ledger, setup=changed)
    (out / leaderboard.SETUP_FILE).unlink()  # a folder from before the stamp: the ledger's record decides
    with pytest.raises(SystemExit, match="another setup"):
        leaderboard.run_recipe("random", 0, 1000, "corpus", out, "t.safetensors", [], ledger=ledger, setup=changed)
    assert leaderboard.run_recipe("random", 0, 1000, "corpus", out, "t.safetensors", [], ledger=ledger,
                                  setup=setup)["R@1"] == 40.0
    assert calls == [("pretrain", "--config")]  # nothing trained again


def test_a_run_recorded_again_keeps_the_day_it_finished(tmp_path):
    load_claims()  # puts bench/ on the path
    from _ledger import Ledger

    ledger = Ledger(tmp_path / "lb-runs.json")
    ledger.put("motion-s0", {"steps": 10}, {"R@1": 1.0})
    data = json.loads(ledger.path.read_text())
    data["motion-s0"]["finished"] = "2000-01-01"  # as if it finished long ago
    ledger.path.write_text(json.dumps(data))
    ledger.put("motion-s0", {"steps": 10}, {"R@1": 1.0})  # its folder read back: the same record
    assert Ledger(ledger.path).records["motion-s0"]["finished"] == "2000-01-01"
    ledger.put("motion-s0", {"steps": 10}, {"R@1": 2.0})  # a new result is a new record, dated today
    assert Ledger(ledger.path).records["motion-s0"]["finished"] != "2000-01-01"
