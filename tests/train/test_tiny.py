"""The tiny students' tokenizer: an id the student never saw in training must still be made
of tokens it was trained to emit, or copying it cannot generalise."""

import pytest
from recipes.demo.task import TicketTriage, make_examples, teacher

import apprentice as ap
from apprentice.train.tiny import task_corpus, train_bpe_tokenizer


@pytest.fixture(scope="module")
def demo_corpus() -> list[str]:
    return task_corpus(TicketTriage(), make_examples(300, seed=0), ap.ScriptedLM(teacher))


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_held_out_order_ids_are_made_of_tokens_seen_in_training_targets(demo_corpus, kind):
    tok = train_bpe_tokenizer(demo_corpus, vocab_size=1000, kind=kind)
    train_ids = {e.order_id for e in make_examples(300, seed=0)}
    held_out = [e.order_id for e in make_examples(100, seed=7) if e.order_id not in train_ids]
    assert len(held_out) > 90
    # What the extract step is trained to emit: the target text, not the prompt.
    seen = set()
    for order_id in train_ids:
        seen.update(tok.tokenize(f"[[order_id]]\n{order_id}"))
    for order_id in held_out:
        in_target = tok.tokenize(f"[[order_id]]\n{order_id}")
        in_ticket = tok.tokenize(f"Hi, Order {order_id} has not arrived after two weeks.")
        id_tokens = in_target[-6:]
        assert id_tokens == list(order_id), (order_id, in_target)
        assert set(id_tokens) <= seen
        # The same tokens in the prompt, so the copy is token for token.
        assert any(in_ticket[i : i + 6] == id_tokens for i in range(len(in_ticket)))
