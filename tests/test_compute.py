"""The compute account (compute.py): FLOPs by Kaplan's formula, checked by hand; tokens counted where work happens
(engines, training, sharded chunks), once."""

import pytest

from varreason import compute
from varreason.compute import Account, account_flops, forward_flops, sequence_context, steps_for_flops


def test_sequence_context_by_hand():
    # 3 new tokens after a prompt of 2: they attend to 3, 4 and 5 tokens -> 12
    assert sequence_context(2, 3) == 3 + 4 + 5
    assert sequence_context(0, 4) == 1 + 2 + 3 + 4
    assert sequence_context(7, 0) == 0


def test_forward_and_training_flops_by_hand():
    # N = 1000, 2 layers, d_attn 8: 10 tokens whose contexts sum to 55 -> 2*1000*10 + 2*2*8*55 = 20000 + 1760
    assert forward_flops(10, 55, 1000, 2, 8) == 21760.0
    acc = Account(generated=10, generated_context=55, trained=10, trained_context=55)
    flops = account_flops(acc, 1000, 2, 8)
    assert flops["generated"] == 21760.0
    assert flops["trained"] == 3 * 21760.0  # forward + backward (2x the forward)
    assert flops["scored"] == 0.0 and flops["total"] == 4 * 21760.0


def test_steps_for_flops():
    # 1.2e9 FLOPs at 1e6 per example and 16 examples per step: 75 steps
    assert steps_for_flops(1.2e9, 1e6, 16) == 75
    assert steps_for_flops(1.0, 1e6, 16) == 1  # at least one step
    with pytest.raises(ValueError):
        steps_for_flops(1.0, 0.0, 16)


def test_set_apart_keeps_a_chunks_work_out_of_the_ledger_and_add_counts_it_once():
    compute.take()
    compute.record("scored", 5, 15)
    with compute.set_apart() as spent:
        compute.record_sequences("generated", [2, 2], [3, 1])
    assert spent[0].generated == 4 and spent[0].generated_context == (3 + 4 + 5) + 3
    assert compute.take() == Account(scored=5, scored_context=15)  # the chunk's work is not in the ledger
    compute.add(spent[0])  # the merge counts it
    assert compute.take() == Account(generated=4, generated_context=15)
    assert compute.take() == Account()


def test_model_shape_counts_every_matmul_but_the_input_embedding(tmp_path):
    # a 2-layer Llama: per layer q,k,v,o + gate,up,down + 2 norms; the tied head counts once, as the embedding's matmul
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    d, kv = 16, 2 * 4  # k and v project to 2 heads of 4 dims
    per_layer = d * d + d * kv + d * kv + d * d + 3 * d * 32 + 2 * d
    expected = 2 * per_layer + d + 100 * d  # final norm; the head (tied) multiplies each token too
    assert compute.model_shape(str(tmp_path)) == {"n_params": expected, "n_layers": 2, "d_attn": 16}


def test_a_resumed_sharded_stage_counts_every_chunk_once(tmp_path):
    """A chunk's compute travels with its shard: the merge counts the chunks a killed process finished too."""
    from varreason.runs import RunDir

    run = RunDir(tmp_path)

    def work(chunk, index, fail_at=None):
        if index == fail_at:
            raise KeyboardInterrupt  # killed here
        compute.record("generated", 10 * len(chunk), 0)
        return [{"x": x} for x in chunk]

    compute.take()
    with run.running("key"), pytest.raises(KeyboardInterrupt):
        run.sharded("s", list(range(6)), 2, lambda c, i: work(c, i, fail_at=1), artifact="s/out.parquet")
    compute.take()  # a new process: the killed one's ledger is gone
    with run.running("key"):
        rows = run.sharded("s", list(range(6)), 2, work, artifact="s/out.parquet")
    assert len(rows) == 6
    assert compute.take().generated == 60  # 3 chunks x 2 items x 10, the first done by the killed process
