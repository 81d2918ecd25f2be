"""The word-pair lexicon parser shared by counterfactual captions and time reversal."""

import pytest

from vidmask.data import reversal
from vidmask.lexicon import pair_table


def test_both_ways_and_one_way():
    table = pair_table(["grows:shrinks", "falls>rises", "speeds up:slows down"], source="x", phrases=True)
    assert table == {"grows": "shrinks", "shrinks": "grows", "falls": "rises",
                     "speeds up": "slows down", "slows down": "speeds up"}


def test_words_only_refuses_a_phrase_and_names_the_source():
    with pytest.raises(ValueError, match=r"loss\.swap\.pairs: 'speeds up:slows down' is not 'word:word'"):
        pair_table(["speeds up:slows down"], source="loss.swap.pairs")
    assert pair_table(["counter-clockwise>clockwise"], source="x", phrases=True) == \
        {"counter-clockwise": "clockwise"}


@pytest.mark.parametrize("entry", ["left", "left:right:up", "left:", "left:2", "a  b:c"])
def test_malformed_entries(entry):
    with pytest.raises(ValueError, match="is not"):
        pair_table([entry], source="src", phrases=True)


def test_two_counterparts_refused_repeats_allowed():
    with pytest.raises(ValueError, match="'left' has two counterparts"):
        pair_table(["left:right", "left>up"], source="src")
    assert pair_table(["left:right", "right:left"], source="src") == {"left": "right", "right": "left"}


def test_reversal_lexicons_parse_strictly():
    """The time-reversal lexicons hold no word with two counterparts: each opposite is one entry."""
    phrases = pair_table(reversal.REVERSE_PHRASES, source="REVERSE_PHRASES", phrases=True)
    assert phrases["rises"] == "sinks" and phrases["falls"] == "rises"
    enter = pair_table(reversal.ENTER_LEAVE, source="ENTER_LEAVE", phrases=True)
    assert enter["moves into view"] == "moves out of view" and enter["exits"] == "enters"
