"""The fixed tokens of every GPTSAN vocabulary, in the released layout.

The encoder checks a vocabulary against these lists and tools/build_vocab.py
writes them, so both agree on one definition.  Counted back from the vocabulary
size V, the last seven ids are SPECIAL_TOKENS (V-7 <|startoftext|> ... V-1
<|endoftext|>), preceded by the 255 BYTE_TOKENS; NAMED_TOKENS sit before the
emoji classes.
"""
SPECIAL_TOKENS = ("<|startoftext|>", "<|inputmask|>", "<|separator|>", "<|nottoken|>",
                  "<|bagoftoken|>", "<|segmenter|>", "<|endoftext|>")
NAMED_TOKENS = ("<BR>", "<SP>", "<TAB>", "<URL>", "<EMAIL>", "<TEL>", "<DATE>", "<PRICE>",
                "<BLOCK>", "<KIGOU>", "<U2000U2BFF>")
BYTE_TOKENS = tuple("<|byte%d|>" % b for b in range(255))  # 0xFF never occurs in UTF-8
