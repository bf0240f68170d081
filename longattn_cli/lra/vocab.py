"""The word-level tokenizers of the LRA tasks share their specials and their ``[CLS]``-first template."""

from __future__ import annotations

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def finish(tok, vocab: dict[str, int], max_length: int):
    """Give a ``tokenizers.Tokenizer`` the ``[CLS] $A`` template and wrap it for transformers."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A",
        pair="[CLS] $A [SEP] $B",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )
