"""This project against the PyTorch peer (transformers' GPTSanJapanese), same configurations.

Runs in .venv-interop (`make bench-peer`). Decoding is greedy at batch 1 with random
weights; the peer uses its KV cache through a hand-written greedy loop (its port has
no working generate() since transformers 4.50). Training is forward + backward + Adam
on random tokens. Graph building / the first calls are excluded on both sides, and
each side runs in its own processes, alternating (RUNS processes per side, REPEATS timed
calls in each); the fastest call counts. Training times blocks of TRAIN_STEPS steps
(ours: the steps Trainer.run takes, without the checkpoint it writes when it returns).

The released 2.8B size takes very long on a CPU: it runs only with --big.
Rows go into bench/results.md under "## PyTorch peer" (that section is replaced).
"""
import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository on sys.path)

DECODE = {
    "tiny": (dict(num_contexts=256, num_switch_layers=2, num_hidden=128, num_header=8,
                  num_experts=4), 16, 64),
    "medium": (dict(num_contexts=1280, num_switch_layers=4, num_hidden=512, num_header=8,
                    num_experts=8), 32, 128),
    "2.8B": (dict(num_contexts=1280, num_switch_layers=10, num_hidden=1024, num_header=16,
                  num_experts=16), 32, 32),
}
TRAIN = dict(num_contexts=128, num_switch_layers=2, num_hidden=128, num_header=8, num_experts=4)
TRAIN_BATCH, TRAIN_STEPS = 8, 10
RUNS, REPEATS = 2, 3  # processes per side (alternating), timed calls per process
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.md")
SECTION = "## PyTorch peer"


def model_params(config):
    from model import params as params_lib
    return params_lib.default_params(num_vocabulary=36000, **config).model


def describe(config):
    c = model_params(config)
    return "C%d %d switch layers H%d E%d" % (c.num_contexts, c.num_switch_layers,
                                             c.num_hidden, c.num_experts)


def prompt(length):
    return [(7 * i + 13) % 30000 + 1 for i in range(length)]


# ---- ours --------------------------------------------------------------------
class OursDecode:
    def __init__(self, mp, prompt_len, new):
        from model import decoding
        self.prompt_len, self.new = prompt_len, new
        self.decoder = decoding.Decoder(
            mp, 1, decoding.prompt_buffer_length(prompt_len, new, mp.num_contexts), new,
            decoding.Sampling(top_k=1))
        self.decoder.init_random()
        self()  # warm-up

    def __call__(self):
        from model import decoding
        t = time.perf_counter()
        decoding.generate(self.decoder, [prompt(self.prompt_len)], [0], self.new)
        return self.new / (time.perf_counter() - t)


class OursTrain:
    """Our training loop on random-token records; each call times TRAIN_STEPS steps."""

    def __init__(self, mp):
        from bench_training import write_records
        from model import devices as devicelib
        from model import params as params_lib, train
        params = dataclasses.replace(params_lib.default_params(), model=mp) \
            .with_train(batch_size=TRAIN_BATCH)
        self.length = mp.num_contexts
        self.folder = tempfile.TemporaryDirectory()
        d = self.folder.name
        write_records(os.path.join(d, "r.tfrecord"), 64, self.length, 36000)
        opts = train.TrainOptions(params=params, input_files=os.path.join(d, "*.tfrecord"),
                                  output_dir=os.path.join(d, "out"), max_training_step=3,
                                  devices=devicelib.local(mesh_shape="1x1"),
                                  progress=False, log_every=0)
        self.trainer = train.Trainer(opts).start()
        self.trainer.run()  # graph optimisation and warm-up

    def __call__(self):
        return TRAIN_BATCH * self.length / common.seconds_per_step(self.trainer, TRAIN_STEPS)

    def close(self):
        self.trainer.close()
        self.folder.cleanup()


# ---- the peer ------------------------------------------------------------------
def peer_model(mp):
    import torch
    import transformers
    torch.manual_seed(0)
    H = mp.num_hidden
    config = transformers.GPTSanJapaneseConfig(
        vocab_size=mp.num_vocabulary, max_position_embeddings=mp.num_contexts, d_model=H,
        d_ff=8 * H, d_ext=4 * H, d_spout=0, num_switch_layers=mp.num_switch_layers,
        num_ext_layers=0, num_heads=mp.num_header, num_experts=mp.num_experts,
        expert_capacity=mp.num_contexts)
    return transformers.GPTSanJapaneseForConditionalGeneration(config)


class PastTuple(tuple):
    """The peer's own per-layer (key, value) tuples. Its 4.57 forward asks the past for
    get_seq_length() (the Cache API) but then indexes it as these tuples; this gives
    the tuples that method, so the peer decodes with its KV cache unchanged."""

    def get_seq_length(self):
        return self[0][0].shape[2]


class PeerDecode:
    def __init__(self, mp, prompt_len, new):
        import torch
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        self.model = peer_model(mp).eval()
        self.prompt_len, self.new = prompt_len, new
        self()

    def __call__(self):
        import torch
        ids = torch.tensor([prompt(self.prompt_len)])
        t = time.perf_counter()
        with torch.no_grad():
            out = self.model(input_ids=ids, use_cache=True)
            for _ in range(self.new - 1):
                nxt = out.logits[:, -1:].argmax(-1)
                out = self.model(input_ids=nxt, past_key_values=PastTuple(out.past_key_values),
                                 use_cache=True)
        return self.new / (time.perf_counter() - t)


class PeerTrain:
    """The peer's forward + backward + Adam on random tokens; each call times
    TRAIN_STEPS steps."""

    def __init__(self, mp):
        import torch
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        self.model = peer_model(mp).train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.generator = torch.Generator().manual_seed(0)
        self.length = mp.num_contexts
        for _ in range(3):
            self.step()

    def step(self):
        import torch
        ids = torch.randint(0, 36000, (TRAIN_BATCH, self.length), generator=self.generator)
        loss = self.model(input_ids=ids, labels=ids).loss
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def __call__(self):
        t = time.time()
        for _ in range(TRAIN_STEPS):
            self.step()
        return TRAIN_STEPS * TRAIN_BATCH * self.length / (time.time() - t)


# ---- the table ------------------------------------------------------------------
def measure(side, kind, name):
    """Best of REPEATS timed calls of one side on one configuration (in this process)."""
    if kind == "decode":
        config, p, n = DECODE[name]
        bench = (OursDecode if side == "ours" else PeerDecode)(model_params(config), p, n)
    else:
        bench = (OursTrain if side == "ours" else PeerTrain)(model_params(TRAIN))
    rates = [bench() for _ in range(REPEATS)]
    if hasattr(bench, "close"):
        bench.close()
    return max(rates)


def in_subprocess(side, kind, name):
    """measure() in a fresh process: TensorFlow's thread pools, once used, slow the
    peer's OpenMP threads in the same process by up to 10x, so each side runs alone."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", side, kind,
                           name], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("%s %s %s failed:\n%s" % (side, kind, name, proc.stderr[-3000:]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(sizes):
    jobs = [("decode", name) for name in sizes] + [("train", "tiny")]
    rows = []
    for kind, name in jobs:
        rates = {"ours": [], "peer": []}
        for _ in range(RUNS):  # alternate, so a slow spell of the machine hits both
            for side in ("ours", "peer"):
                rates[side].append(in_subprocess(side, kind, name))
        a, b = max(rates["ours"]), max(rates["peer"])
        if kind == "decode":
            config, p, n = DECODE[name]
            what = "decode, %s, prompt %d + %d new, batch 1" % (describe(config), p, n)
        else:
            what = "train, %s, batch %d (fwd+bwd+Adam)" % (describe(TRAIN), TRAIN_BATCH)
        rows.append(dict(what=what, ours=a, baseline=b, ratio=a / b, unit="tokens/s"))
        print(rows[-1], flush=True)
    return rows


def write(rows, load):
    import transformers
    common.write_results(RESULTS, (
        "Written by `make bench-peer` on %s; baseline = transformers %s GPTSanJapanese "
        "(PyTorch, %d threads); each side in its own process, alternating, best of %d "
        "processes x %d calls; load average before: %s.\n\n%s"
        % (time.strftime("%Y-%m-%d"), transformers.__version__, min(2, os.cpu_count() or 1),
           RUNS, REPEATS, load, common.markdown_table(rows))), SECTION)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--big", action="store_true", help="also the released 2.8B size (very slow)")
    p.add_argument("--no_write", action="store_true", help="print only; leave results.md alone")
    p.add_argument("--worker", nargs=3, metavar=("SIDE", "KIND", "NAME"), help=argparse.SUPPRESS)
    args = p.parse_args()
    from model import cli
    cli.quiet_tensorflow(False)
    if args.worker:
        print(json.dumps(measure(*args.worker)))
        return
    load = "%.2f" % os.getloadavg()[0]
    rows = run(["tiny", "medium"] + (["2.8B"] if args.big else []))
    common.print_table(rows)
    if not args.no_write:
        write(rows, load)


if __name__ == "__main__":
    main()
