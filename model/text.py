"""How texts become model inputs and ids become text again.

Every function takes an encoder object (encode_swe.SWEEncoder or anything with
the same ids and encode/decode), so this module never loads a vocabulary.

- Prompt: run_generate's layout. Plain: [<|startoftext|>, <|segmenter|>] +
  context (causal). As prefix: [<|startoftext|>] + context + [<|segmenter|>],
  the start token and context being the bidirectional prefix.
- Query: run_languagemodel's layout, as released: [<|startoftext|>] + the
  context, each mask string one <|inputmask|>, every context token prefix
  (in a mask-filling model), no <|endoftext|>, cut to the model's context.
- visible_ids / ids_to_text: the control-token rules of the output text.
"""


def control_ids(enc):
    return {enc.startoftext, enc.inputmask, enc.separator, enc.nottoken, enc.bagoftoken,
            enc.segmenter, enc.endoftext}


def visible_ids(ids, enc, previous=None):
    """The ids that make the text: stop at <|endoftext|>, <|bagoftoken|>
    stands for the previous kept token repeated (as released: it adds that token
    twice more; `previous` carries one from the context), other control tokens
    are dropped. Byte tokens are kept (the released script dropped them)."""
    controls = control_ids(enc)
    kept = []
    for i in ids:
        if i == enc.endoftext:
            break
        if i == enc.bagoftoken:
            last = kept[-1] if kept else previous
            if last is not None:
                kept += [last, last]
        elif i not in controls:
            kept.append(i)
    return kept


def last_visible(ids, enc):
    kept = visible_ids(ids, enc)
    return kept[-1] if kept else None


def ids_to_text(ids, enc, previous=None):
    return enc.decode(visible_ids(ids, enc, previous))


class Prompt:
    """One context as model input ids plus the size of its bidirectional prefix."""

    def __init__(self, text, enc, prefix):
        self.text = text
        body = enc.encode(text)
        if prefix:
            self.ids = [enc.startoftext] + body + [enc.segmenter]
            self.num_precontext = 1 + len(body)
        else:
            self.ids = [enc.startoftext, enc.segmenter] + body
            self.num_precontext = 0
        self.previous = last_visible(body, enc)


class Query:
    """One text as model input: ids, prefix size and the vector position.
    A pos_vector outside the (possibly cut) input raises ValueError."""

    def __init__(self, text, enc, mask, pos_vector, num_contexts, fills_masks=True):
        self.text = text
        tokens = []
        pieces = text.split(mask) if fills_masks else [text]
        for k, piece in enumerate(pieces):
            if k:
                tokens.append(enc.inputmask)
            tokens += enc.encode(piece)
        self.input_ids = [enc.startoftext] + tokens
        self.truncated = len(self.input_ids) > num_contexts
        self.ids = self.input_ids[:num_contexts]
        # As released: every context token is prefix in a mask-filling model.
        self.num_precontext = min(len(tokens), num_contexts) if fills_masks else 0
        # Scored positions: each fed position with a next input token.
        self.num_scores = min(len(self.input_ids) - 1, num_contexts)
        n = len(self.ids)
        self.pos_index = pos_vector + n if pos_vector < 0 else pos_vector
        if not 0 <= self.pos_index < n:
            raise ValueError("pos_vector %d is outside the input: %d positions (-%d..%d) for "
                             "%d context tokens plus <|startoftext|>" % (pos_vector, n, n, n - 1,
                                                                         n - 1))


def fill(query, logits, vector, enc):
    """run_languagemodel's result for one query from its logits [length, vocab]:
    a masked position takes the argmax, any other the input token; its score is
    the raw logit of the next input token."""
    out_ids, scores = [], []
    for i in range(query.num_scores):
        next_id = query.input_ids[i + 1]
        out_ids.append(int(logits[i].argmax()) if next_id == enc.inputmask else next_id)
        scores.append(float(logits[i, next_id]))
    return {"output_text": enc.decode(out_ids),
            "output_tokens": out_ids,
            "output_scores": scores,
            "output_vector": [float(v) for v in vector],
            "input_text": query.text,
            "input_tokens": query.input_ids,
            # Extra key (not in the released output): the spelling of each output id.
            "output_spellings": [enc.id_to_token(i) for i in out_ids]}
