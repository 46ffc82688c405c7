"""The text tower's poolers: [CLS] (released models) and the masked mean (small towers trained from scratch)."""
import pytest
import torch

from HLIPCore.model.text import HFTextEncoder

BERT = {"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 12, "pad_token_id": 0}


def encoder(pooler):
    torch.manual_seed(0)
    return HFTextEncoder(output_dim=8, hf_config=BERT, pooler_type=pooler).eval()


def test_mean_pooler_is_the_masked_mean_of_the_last_hidden_states():
    enc = encoder("mean_pooler")
    ids = torch.tensor([[2, 7, 9, 3, 0, 0], [2, 5, 6, 8, 11, 3]])
    with torch.no_grad():
        hidden = enc.transformer(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
        expected = torch.stack([hidden[0, :4].mean(0), hidden[1].mean(0)]) @ enc.proj.weight.T
        torch.testing.assert_close(enc(ids), expected)
        # padding does not change a text's embedding
        torch.testing.assert_close(enc(ids[:1, :4]), enc(ids[:1]), atol=1e-5, rtol=1e-5)


def test_cls_pooler_reads_the_first_token_and_poolers_share_weights():
    cls, mean = encoder("cls_last_hidden_state_pooler"), encoder("mean_pooler")
    assert cls.state_dict().keys() == mean.state_dict().keys()  # a pooler is configuration, not weights
    ids = torch.tensor([[2, 7, 9, 3]])
    with torch.no_grad():
        hidden = cls.transformer(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        torch.testing.assert_close(cls(ids), hidden[:, 0] @ cls.proj.weight.T)
        assert not torch.allclose(cls(ids), mean(ids))


def test_unknown_pooler_is_refused():
    with pytest.raises(ValueError, match="mean_pooler"):
        encoder("max_pooler")
