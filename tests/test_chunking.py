from hypothesis import given, settings
from hypothesis import strategies as st

from lvm.data.chunking import (
    ChunkerConfig,
    chunk_text,
    merge_short,
    pack_to_target,
    split_sentences,
)


def test_splits_on_sentence_ends_but_not_abbreviations_or_initials():
    text = 'J. R. R. Tolkien wrote it. He was born in 1892, e.g. in Bloemfontein. The U.S. Army came! Did it? "Yes."'
    assert split_sentences(text) == [
        "J. R. R. Tolkien wrote it.",
        "He was born in 1892, e.g. in Bloemfontein.",
        "The U.S. Army came!",
        "Did it?",
        '"Yes."',
    ]


def test_decimal_numbers_and_lowercase_continuations_do_not_split():
    assert split_sentences("Pi is about 3.14 in value. it continues. Next one.") == [
        "Pi is about 3.14 in value. it continues.",
        "Next one.",
    ]


def test_short_sentences_merge_into_a_neighbour():
    assert merge_short(["Rome.", "It is a city in Italy.", "Big."], 10) == ["Rome. It is a city in Italy. Big."]
    assert merge_short(["Tiny."], 10) == ["Tiny."]  # an article shorter than the minimum stays one chunk


def test_pack_to_target_packs_consecutive_sentences():
    pieces = ["a" * 30, "b" * 30, "c" * 30, "d" * 5]
    assert pack_to_target(pieces, 50) == ["a" * 30 + " " + "b" * 30, "c" * 30 + " " + "d" * 5]


words = st.text(alphabet="abcdefghij", min_size=1, max_size=8)
sentence = st.builds(
    lambda ws, end: " ".join(ws).capitalize() + end,
    st.lists(words, min_size=1, max_size=12),
    st.sampled_from([".", "!", "?"]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(sentence, min_size=1, max_size=20), st.integers(0, 60), st.one_of(st.none(), st.integers(20, 200)))
def test_chunking_loses_and_reorders_nothing(sentences, min_chars, target):
    text = " ".join(sentences)
    chunks = chunk_text(text, ChunkerConfig(min_chars=min_chars, target_chars=target))
    assert " ".join(chunks) == text
    # every chunk but possibly the only one respects the minimum length
    if len(chunks) > 1:
        assert all(len(c) >= min_chars for c in chunks)
