"""The released script's decoding: re-run the whole sequence for every token.

Each step feeds the current window, padded at the end, through a
`runtime.Forward` graph and takes the argmax of the logits at the window's
last position. Causal masking makes the padding invisible, so this computes
exactly what the cached decoder computes, at the cost of a full forward pass
per token. Graphs have static shapes: either one graph of the longest length
the run needs, or (bucketed=True, the benchmark's stronger baseline) one graph
per power-of-two length, so early tokens pay only for a short window. Greedy
only: it is the reference for tests and the baseline for bench_decoding.py.
"""
import numpy as np

from model import decoding, runtime


class RecomputeDecoder:
    def __init__(self, model_params, batch_size, length, devices=None, with_spout=False,
                 bucketed=False):
        self.params = model_params
        self.num_contexts = model_params.num_contexts
        self.batch_size, self.length = batch_size, min(length, self.num_contexts)
        self.devices, self.with_spout, self.bucketed = devices, with_spout, bucketed
        self.forwards = {}
        self.load = None

    def graph_length(self, n):
        return decoding.bucket(n, self.length) if self.bucketed else self.length

    def forward_for(self, n):
        """The graph that runs windows of n tokens (built on first use)."""
        length = self.graph_length(n)
        if length not in self.forwards:
            # seed=0: every bucket's graph draws the same random weights.
            forward = runtime.Forward(self.params, self.batch_size, length, devices=self.devices,
                                      with_spout=self.with_spout, seed=0)
            self.forwards[length] = self.load(forward)
        return self.forwards[length]

    def restore(self, model_dir):
        self.load = lambda forward: forward.restore(model_dir)
        return self

    def init_random(self):
        self.load = lambda forward: forward.init_random()
        return self

    def generate(self, prompts, num_precontext, max_generate, banned=(), end_id=None,
                 spout=None):
        """Greedy decoding with the same window rule as decoding.generate."""
        B = self.batch_size
        windows = decoding.Windows(prompts, num_precontext, self.num_contexts, self.length)
        results = [decoding.Result() for _ in prompts]
        windows.rows += [([0], 0)] * (B - len(prompts))
        done = np.array([i >= len(prompts) for i in range(B)])
        for _ in range(max_generate):
            if done.all():
                break
            tokens, lengths, npc = windows.arrays(B)
            n = int(lengths.max())
            inputs = {"num_precontext": npc}
            if spout is not None:
                inputs["spout"] = np.asarray(spout, np.float32)
            forward = self.forward_for(n)
            logits = forward(tokens[:, :self.graph_length(n)], **inputs)["logits"]
            logits = logits[np.arange(B), lengths - 1]
            logits[:, list(banned)] = -np.inf
            next_ids = logits.argmax(-1)
            log_z = np.logaddexp.reduce(logits.astype(np.float64), axis=-1)
            for i, r in enumerate(results):
                if done[i]:
                    continue
                token = int(next_ids[i])
                r.tokens.append(token)
                r.sum_logprob += float(logits[i, token] - log_z[i])
                windows.extend(i, [token])
                if token == end_id:
                    r.ended = done[i] = True
        return results

    def close(self):
        for forward in self.forwards.values():
            forward.close()
