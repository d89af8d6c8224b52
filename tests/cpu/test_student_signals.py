"""Student-side signals (reference loss, BADGE embeddings) and the reward model, on real tiny models."""
import numpy as np
import pyarrow as pa
import pytest
import torch

from actors.reward import RewardModelActor
from actors.sft_data import IGNORE_INDEX, collate, tokenize_examples
from actors.student import StudentScorerActor
from actors.student_signals import _logits_and_head_input, sparse_projection
from loopdistill.config import ModelConfig, RewardConfig, StudentConfig
from loopdistill.models import ModelLoadError
from loopdistill.schemas import SEEDS, SchemaError, make_table
from loopdistill.training_data import to_train_examples


@pytest.fixture(scope="module")
def student():
    return StudentScorerActor(StudentConfig(model=ModelConfig(path="tiny-random-llama"), max_new_tokens=8), "gsm8k")


def _seeds(n=4):
    rows = [{"id": f"s{i}", "question": f"Tom has {i + 2} apples and buys {i} more. How many?",
             "answer": f"He has {i + 2} + {i} = {2 * i + 2} apples.\n#### {2 * i + 2}", "reference": str(2 * i + 2)} for i in range(n)]
    return make_table(SEEDS, rows)


def test_reference_loss_is_the_teacher_forced_nll_of_the_answer(student):
    seeds = _seeds(3)
    losses = student.reference_loss(seeds, None).column("gt_loss").to_pylist()
    # Recompute the first one by hand: mean cross-entropy over the answer tokens only.
    table = to_train_examples(student.task, seeds.slice(0, 1))
    ex = tokenize_examples(table, student.engine.tokenizer, True, 512, 512 + 8)[0]
    with torch.no_grad():
        logits = student.engine.base(input_ids=torch.tensor([ex.input_ids])).logits[0, :-1]
    labels = torch.tensor(ex.labels[1:])
    expected = torch.nn.functional.cross_entropy(logits[labels != IGNORE_INDEX], labels[labels != IGNORE_INDEX])
    assert losses[0] == pytest.approx(float(expected), rel=1e-5)
    assert len(set(np.round(losses, 6))) == 3


def test_badge_embedding_is_the_projected_output_layer_gradient(student):
    seeds = _seeds(2)
    preds = student.predict(seeds, None)
    dim = 4
    emb = np.array(student.gradient_embeddings(seeds, preds, None, dim, seed=3).column("embedding").to_pylist())
    assert emb.shape == (2, dim * dim)
    # Independent check by autograd on a leaf copy of the output layer: d(mean NLL)/dW, then sketch.
    table = to_train_examples(student.task, seeds.slice(0, 1), preds.column("prediction").to_pylist()[:1])
    ex = tokenize_examples(table, student.engine.tokenizer, True, 512, 512 + 8)[0]
    batch = collate([ex], student.engine.tokenizer.pad_token_id)
    with torch.no_grad():
        _, hidden = _logits_and_head_input(student.engine.base, batch)
    w = student.engine.base.get_output_embeddings().weight.detach().clone().requires_grad_(True)
    logits = hidden[0, :-1] @ w.T
    labels = batch["labels"][0, 1:]
    keep = labels != IGNORE_INDEX
    torch.nn.functional.cross_entropy(logits[keep], labels[keep]).backward()
    s_v = sparse_projection(w.shape[0], dim, 3)
    s_h = sparse_projection(w.shape[1], dim, 4)
    expected = (s_v @ w.grad @ s_h.T).flatten().numpy()
    np.testing.assert_allclose(emb[0], expected, rtol=1e-3, atol=1e-6)


def test_reward_model_scores_each_answer_independently_of_the_batch(tiny_reward_model):
    actor = RewardModelActor(RewardConfig(source="model", model=ModelConfig(path=tiny_reward_model), batch_size=3))
    questions = ["What is 2 + 2?", "Name a prime number larger than ten, please."] * 2
    answers = ["4", "13", "five", "It is 11 because 11 has no divisors but 1 and itself."]
    together = actor.rewards(questions, answers)
    alone = [actor.rewards([q], [a])[0] for q, a in zip(questions, answers)]
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
    assert len(set(np.round(together, 5))) == 4  # the answer changes r


def test_reward_model_table_boundary(tiny_reward_model):
    actor = RewardModelActor(RewardConfig(source="model", model=ModelConfig(path=tiny_reward_model)))
    seeds = _seeds(2)
    with pytest.raises(SchemaError, match="prediction"):
        actor.score(seeds, pa.table({"id": ["s0", "s1"]}))


def test_bad_reward_model_path_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="nowhere"):
        RewardModelActor(RewardConfig(source="model", model=ModelConfig(path=str(tmp_path / "nowhere"))))
