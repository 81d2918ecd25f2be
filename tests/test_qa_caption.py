"""QA and captioning: metrics against hand-computed values, tasks forward/backward,
decoding (beam = 1 is greedy; a wide beam is exhaustive search)."""

import itertools
import json
import math

import pytest
import torch

from vidmask.config import ModelConfig, TextConfig
from vidmask.metrics.caption import caption_metrics, java_available, simple_tokenize, tokenize
from vidmask.metrics.qa import qa_accuracy
from vidmask.models import VideoTextModel
from vidmask.models.caption import CaptionDecoder, beam_search_ids, greedy_ids, start, step
from vidmask.models.fusion import FusionEncoder
from vidmask.models.qa import UNANSWERABLE, answer_ids, load_answer_list
from vidmask.tasks.caption import CaptionTask
from vidmask.tasks.qa import QATask

needs_java = pytest.mark.skipif(not java_available(), reason="java not on PATH")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, depth=2, heads=2, embed_dim=16, text=TextConfig(init="random"))
    return VideoTextModel(cfg, num_frames=2, img_size=32)


def video(B=3):
    return torch.randn(B, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- QA

def test_qa_accuracy_by_hand():
    out = qa_accuracy(["Yes ", "dog", "cat", "two"], ["yes", " Dog", "dog", "three"], ["what", "what", "who", "how"])
    assert out == {"acc": 50.0, "per_type": {"how": 0.0, "what": 100.0, "who": 0.0}, "n": 4}
    assert qa_accuracy(["a", "b", "c"], ["a", "x", "c"]) == {"acc": pytest.approx(200 / 3), "per_type": {}, "n": 3}
    assert math.isnan(qa_accuracy([], [])["acc"])
    with pytest.raises(ValueError):
        qa_accuracy(["a"], ["a", "b"])


def test_answer_list(tmp_path):
    p = tmp_path / "answer_list.json"
    p.write_text(json.dumps(["Man", "dog", "two"]))
    answers = load_answer_list(p)
    assert answers == ["man", "dog", "two"]
    assert answer_ids(["DOG ", "cat", "man"], answers) == [1, UNANSWERABLE, 0]
    p.write_text(json.dumps(["dog", "Dog"]))
    with pytest.raises(ValueError):
        load_answer_list(p)


def test_qa_task_forward_backward_predict(model):
    fusion = FusionEncoder(model.text.width, model.visual.dim, depth=2)
    task = QATask(model, fusion, num_answers=7)
    questions = ["what is red?", "who moves left", "how many stars are there"]
    losses, report = task({"video": video(), "caption": questions, "answer_id": torch.tensor([3, UNANSWERABLE, 6])})
    assert set(losses) == {"qa_loss"} and torch.isfinite(losses["qa_loss"])
    assert float(report["answerable"]) == pytest.approx(200 / 3)
    losses["qa_loss"].backward()
    for part in (task.head, fusion, model.visual):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    pred = task.predict(video(), questions)
    assert pred.shape == (3,) and pred.dtype == torch.long and (pred < 7).all()
    # a batch with no answerable question: zero loss, no NaN
    none, _ = task({"video": video(), "caption": questions, "answer_id": torch.full((3,), UNANSWERABLE)})
    assert float(none["qa_loss"].detach()) == 0.0


# ---------------------------------------------------------------- captioning task

def test_caption_task_forward_backward_and_decoding(model):
    task = CaptionTask(model, depth=2, max_positions=16)
    words = model.text.word_embeddings().weight
    assert torch.equal(task.decoder.tok.weight, words)  # initialised from BERT (same width) ...
    assert task.decoder.tok.weight.data_ptr() != words.data_ptr()  # ... as a copy
    captions = ["a red circle moves left", "two stars", "the blue square turns slowly around"]
    losses, report = task({"video": video(), "caption": captions})
    assert set(losses) == {"caption_loss"} and torch.isfinite(losses["caption_loss"])
    assert report["caption_tokens"] == 5 + 2 + 6 + 3  # words + [SEP] per caption
    losses["caption_loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in task.decoder.parameters() if p.grad is not None)
    assert model.visual.patch_embed.weight.grad is not None
    tokens = task.encode(video())
    greedy = task.greedy(tokens, max_len=6)
    beam1 = task.beam_search(tokens, beam=1, max_len=6)
    beam3 = task.beam_search(tokens, beam=3, max_len=6)
    assert all(isinstance(s, str) for s in greedy + beam3) and len(beam3) == 3
    assert beam1 == greedy
    assert torch.equal(greedy_ids(task.decoder, tokens, 6), beam_search_ids(task.decoder, tokens, 1, 6))
    fresh = CaptionTask(model, width=32, max_positions=16)  # other width: fresh embeddings
    assert fresh.decoder.tok.weight.shape[1] == 32


def test_decoder_is_causal():
    torch.manual_seed(0)
    dec = CaptionDecoder(vocab_size=11, width=16, video_width=8, bos_id=1, eos_id=2, pad_id=0, max_positions=8)
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    vid = torch.randn(1, 3, 8)
    a = dec(ids, vid)
    b = dec(torch.tensor([[1, 5, 6, 9, 3]]), vid)
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-5)  # a changed future token changes no earlier output
    assert not torch.allclose(a[:, 3:], b[:, 3:], atol=1e-3)


@torch.no_grad()
def test_cached_decoding_equals_full_prefix_recompute():
    """The key/value-cached step gives next_log_probs of the whole prefix, also after rows
    are reordered (beam search), and greedy decoding equals a loop over next_log_probs."""
    torch.manual_seed(0)
    dec = CaptionDecoder(vocab_size=13, width=16, video_width=8, bos_id=1, eos_id=2, pad_id=0, depth=2,
                         max_positions=8)
    vid = torch.randn(3, 5, 8)
    ctx = dec.context(vid)  # (3, K, W)
    state = start(dec, ctx, repeat=2)  # rows 0,1 clip 0; 2,3 clip 1; 4,5 clip 2
    rows_ctx = ctx.repeat_interleave(2, 0)
    ids = torch.full((6, 1), 1)
    g = torch.Generator().manual_seed(1)
    for t in range(6):
        got = step(dec, ids[:, -1], state)
        ref = dec.next_log_probs(ids, rows_ctx)
        assert torch.allclose(got, ref, atol=1e-5), t
        parents = torch.arange(3).repeat_interleave(2) * 2 + torch.randint(0, 2, (6,), generator=g)
        ids = torch.cat([ids[parents], torch.randint(3, 13, (6, 1), generator=g)], 1)
        state.reorder(parents)
    # greedy through the cache vs the plain loop
    ref_ids = torch.full((3, 1), 1)
    for _ in range(6):
        ref_ids = torch.cat([ref_ids, dec.next_log_probs(ref_ids, ctx).argmax(-1, keepdim=True)], 1)
    got_ids = greedy_ids(dec, vid, max_len=6)
    for b in range(3):  # greedy pads after [SEP]; compare up to and including it
        n = got_ids.shape[1]
        assert torch.equal(got_ids[b], ref_ids[b, :n].masked_fill(got_ids[b] == 0, 0))
    with pytest.raises(ValueError, match="positions"):
        state.length = 8
        step(dec, ids[:, -1], state)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
@torch.no_grad()
def test_wide_beam_is_exhaustive_search(length_penalty):
    """Vocabulary {pad, bos, eos, w3, w4}: with a beam wider than the number of
    hypotheses (15 for 3 steps), beam search must return the exact best sequence."""
    torch.manual_seed(0)
    dec = CaptionDecoder(vocab_size=5, width=16, video_width=8, bos_id=1, eos_id=2, pad_id=0, max_positions=6)
    vid = torch.randn(2, 3, 8)
    got = beam_search_ids(dec, vid, beam=16, max_len=3, length_penalty=length_penalty)
    for b in range(2):
        ctx = dec.context(vid[b : b + 1])
        best, best_seq = -math.inf, None
        for L in (1, 2, 3):
            for seq in itertools.product([2, 3, 4], repeat=L):
                if 2 in seq[:-1] or (L < 3 and seq[-1] != 2):
                    continue  # [SEP] ends a caption; shorter ones must end with it
                ids, total = [1], 0.0
                for t in seq:
                    total += float(dec.next_log_probs(torch.tensor([ids]), ctx)[0, t])
                    ids.append(t)
                score = total / L**length_penalty
                if score > best:
                    best, best_seq = score, ids
        row = [t for t in got[b].tolist() if t != 0]  # drop the [PAD] after [SEP]
        assert row == best_seq


# ---------------------------------------------------------------- caption metrics

def test_caption_metrics_by_hand():
    # two clips, one reference each, candidate == reference. Every n-gram occurs in
    # one clip of two: idf = log 2 for all. Unigram and bigram cosine = 1, no 3-/4-grams
    # in two-word captions (cosine 0): CIDEr-D = 10 * mean(1, 1, 0, 0) = 5 -> 500.
    cands = {"a": "red circle", "b": "blue star"}
    refs = {"a": ["red circle"], "b": ["blue star"]}
    out = caption_metrics(cands, refs, tokenizer="simple", meteor=False)
    assert out["CIDEr"] == pytest.approx(500.0)
    assert out["ROUGE-L"] == pytest.approx(100.0)
    assert set(out) == {"CIDEr", "BLEU-4", "ROUGE-L"}
    # ROUGE-L: LCS("the red circle moves", "a red circle turns") = 2, P = R = 1/2 -> F = 1/2
    out = caption_metrics({1: "the red circle moves"}, {1: ["a red circle turns"]}, tokenizer="simple", meteor=False)
    assert out["ROUGE-L"] == pytest.approx(50.0)
    assert out["CIDEr"] == 0.0  # one clip: every idf is log(1) - log(1) = 0
    # BLEU-4 of a candidate equal to its reference (>= 4 words): 100
    same = caption_metrics({1: "a red circle moves left"}, {1: ["A red circle moves left."]}, tokenizer="simple",
                           meteor=False)
    assert same["BLEU-4"] == pytest.approx(100.0, abs=1e-4)


def test_cider_equals_pycocoevalcap_directly():
    from pycocoevalcap.cider.cider import Cider

    refs = {0: ["a red circle moves left", "the red ball goes left"], 1: ["two blue stars spin"],
            2: ["a green square moves up", "a square rises"], 3: ["a yellow box goes down"]}
    cands = {k: v[0] for k, v in refs.items()}  # identical candidate and (first) reference
    direct = Cider().compute_score(refs, {k: [v] for k, v in cands.items()})[0]
    assert caption_metrics(cands, refs, tokenizer="simple", meteor=False)["CIDEr"] == pytest.approx(100 * direct)
    with pytest.raises(ValueError):
        caption_metrics({0: "x"}, {1: ["x"]}, tokenizer="simple")


def test_simple_tokenizer():
    assert simple_tokenize("A man, riding a Horse!  Don't-stop.") == "a man riding a horse don't stop"
    assert tokenize({1: ["Hi there."]}, "simple") == {1: ["hi there"]}


@needs_java
def test_ptb_tokenizer_and_meteor_with_java():
    refs = {0: ["A red circle moves left.", "The red ball goes left!"], 1: ["Two blue stars spin."]}
    cands = {0: "a red circle moves left", 1: "two stars spin"}
    assert tokenize({0: ["A man, riding a Horse!"]}, "ptb") == {0: ["a man riding a horse"]}
    ptb = caption_metrics(cands, refs, tokenizer="ptb", meteor=True)
    simple = caption_metrics(cands, refs, tokenizer="simple", meteor=False)
    for key in ("CIDEr", "BLEU-4", "ROUGE-L"):  # plain captions: both tokenizers agree
        assert ptb[key] == pytest.approx(simple[key])
    assert 0.0 < ptb["METEOR"] <= 100.0
