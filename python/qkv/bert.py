"""qkv.bert: BERT encoders from Hugging Face directories, and sentence embeddings.

    model = qkv.bert.BertModel.from_pretrained("all-MiniLM-L6-v2")    # config.json + safetensors
    out = model(input_ids, attention_mask)            # ids, mask [B, L] (1 = token, 0 = padding)
    out.last_hidden_state, out.pooler_output          # Variables [B, L, H], [B, H]

    encoder = qkv.bert.SentenceEncoder("all-MiniLM-L6-v2")            # or dtype="bf16"
    embeddings = encoder.embed(input_ids, attention_mask)            # f32 [B, H], unit rows

BertModel has transformers' state_dict names and is a qkv.nn.Module (train /
eval, named_parameters, strict load_state_dict), so it can be fine-tuned with
qkv.autograd. from_pretrained returns it in eval mode, as transformers does.
"""

from __future__ import annotations

from ._qkv.bert import (  # noqa: F401
    BertConfig,
    BertModel,
    BertOutput,
    SentenceEncoder,
    l2_normalize_rows,
    load_bert_config,
    load_bert_weights,
    load_pretrained_weights,
    pool_tokens,
)
