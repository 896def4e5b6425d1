"""Where a graph runs: local GPUs or CPUs, a multi-host TF cluster, or a TPU.

`resolve` is the one entry point; it is also the only place where a model's
num_pallarelizm becomes a mesh shape (batch x model over the devices found).

Multi-host: every process starts a tf.distribute.Server from TF_CONFIG (or
worker_hosts/task_index). Worker 0 (the chief) builds the graph with one mesh
slice per `/job:worker/task:k` device and drives the session; the other workers
only serve their devices (resolve returns None for them). Unreachable hosts fail
within a bounded time. TPUs are reached through TPUEstimator (model/estimator.py);
`tpu_mesh` finds their cores.
"""
import json
import os
import socket
import time

from model import mesh as meshlib
from model.errors import UserError

CONNECT_TIMEOUT_S = 60


class Devices:
    """A mesh shape, one device string per mesh slot, and the session
    target/config that makes those devices exist."""

    def __init__(self, shape, devices, config, target=""):
        self.shape, self.devices, self.config, self.target = shape, devices, config, target


def shape_for(num_devices, num_pallarelizm, requested=None):
    """The mesh over `num_devices`: `requested` ('2x2', 'batch:2;model:2' or an
    mtf.Shape) when given, else batch x min(num_pallarelizm, num_devices)."""
    if requested is not None:
        return parse_shape(requested)
    try:
        return meshlib.mesh_shape(num_devices, min(num_pallarelizm, num_devices))
    except ValueError as e:
        raise UserError("num_pallarelizm: %s" % e)


def parse_shape(shape):
    """'2x2', 'batch:2;model:2' or an mtf.Shape -> mtf.Shape."""
    return meshlib.parse_mesh_shape(shape) if isinstance(shape, str) else shape


def local(num_pallarelizm=1, mesh_shape=None, cpu_devices=None):
    """GPUs when visible, else the CPU split into `cpu_devices` logical devices."""
    requested = parse_shape(mesh_shape) if mesh_shape is not None else None
    n_cpu = cpu_devices or (requested.size if requested is not None else 1)
    config = meshlib.session_config(n_cpu)
    gpus = [] if cpu_devices else visible_gpus()
    if gpus:
        names = gpus[:requested.size] if requested is not None else gpus
    else:
        n = requested.size if requested is not None else n_cpu
        cpus = meshlib.cpu_device_names(n)
        names = [cpus[k % n_cpu] for k in range(n)]
    shape = requested if requested is not None else shape_for(len(names), num_pallarelizm)
    if len(names) < shape.size:
        raise UserError("mesh %s needs %d devices but only %d are available (more "
                        "cpu_devices or a smaller mesh_shape)" % (shape, shape.size, len(names)))
    return Devices(shape, names[:shape.size], config)


def visible_gpus():
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return []
    try:
        import tensorflow as tf2
        return ["/device:GPU:%d" % i for i in range(len(tf2.config.list_physical_devices("GPU")))]
    except Exception:  # no CUDA runtime: plain CPU
        return []


def resolve(num_pallarelizm, mesh_shape=None, cpu_devices=None, worker_hosts=None,
            task_index=0):
    """Devices for this process: a cluster from worker_hosts ('h:p,h:p') or
    TF_CONFIG, else the local machine. None for a cluster worker that only
    served its devices until the chief finished."""
    cluster = cluster_spec(worker_hosts, task_index)
    if cluster is None:
        try:
            return local(num_pallarelizm, mesh_shape, cpu_devices)
        except ValueError as e:
            raise UserError(str(e))
    return _cluster_devices(*cluster, num_pallarelizm, mesh_shape, cpu_devices)


def cluster_spec(worker_hosts=None, task_index=0):
    """(worker host list, this task's index) from worker_hosts or TF_CONFIG, else None."""
    if worker_hosts:
        return [h.strip() for h in worker_hosts.split(",") if h.strip()], task_index
    config = os.environ.get("TF_CONFIG")
    if not config:
        return None
    try:
        config = json.loads(config)
        hosts = config["cluster"]["worker"]
        task = config.get("task", {})
        if task.get("type", "worker") != "worker":
            raise UserError("TF_CONFIG task type %r is not supported; use 'worker'" % task["type"])
        return hosts, int(task.get("index", 0))
    except (ValueError, KeyError, TypeError) as e:
        raise UserError("TF_CONFIG is not valid JSON with cluster.worker and task.index (%s)" % e)


def _cluster_devices(hosts, index, num_pallarelizm, mesh_shape, cpu_devices):
    from model.compat import tf
    if not 0 <= index < len(hosts):
        raise UserError("task index %d is outside the %d workers" % (index, len(hosts)))
    spec = tf.train.ClusterSpec({"worker": hosts})
    server = tf.distribute.Server(spec, job_name="worker", task_index=index,
                                  config=meshlib.session_config(cpu_devices or 1))
    if index != 0:
        server.join()
        return None
    wait_for_hosts(hosts)
    names = meshlib.worker_device_names(len(hosts))
    shape = shape_for(len(names), num_pallarelizm, mesh_shape)
    if shape.size != len(names):
        raise UserError("mesh %s needs %d devices; the cluster has %d workers"
                        % (shape, shape.size, len(names)))
    config = meshlib.session_config(cpu_devices or 1)
    config.operation_timeout_in_ms = CONNECT_TIMEOUT_S * 1000 * 10
    return Devices(shape, names, config, target=server.target)


def wait_for_hosts(hosts, timeout=CONNECT_TIMEOUT_S):
    """Fail with a clear message if a worker cannot be reached within `timeout` s."""
    deadline = time.time() + timeout
    for host in hosts:
        name, _, port = host.rpartition(":")
        while True:
            try:
                socket.create_connection((name, int(port)), timeout=5).close()
                break
            except (OSError, ValueError):
                if time.time() > deadline:
                    raise UserError("worker %s is unreachable after %d s; start it first "
                                    "(same command with its task index)" % (host, timeout))
                time.sleep(0.5)


def tpu_mesh(num_pallarelizm, tpu_nodes=None, mesh_shape=None, cpu_devices=None):
    """(mesh shape, grpc master or None) for TPUEstimator: every core of the TPU
    `tpu_nodes`, or `cpu_devices` host CPUs when no TPU is named."""
    master, cores = resolve_tpu(tpu_nodes) if tpu_nodes else (None, cpu_devices or 1)
    try:
        shape = shape_for(cores, num_pallarelizm, mesh_shape)
    except ValueError as e:
        raise UserError(str(e))
    if master is not None and shape.size != cores:
        raise UserError("mesh %s needs %d TPU cores; %s has %d"
                        % (shape, shape.size, tpu_nodes, cores))
    return shape, master


def resolve_tpu(tpu_nodes, timeout=CONNECT_TIMEOUT_S):
    """(grpc master, number of cores) of a TPU, through cloud-tpu-client; a TPU
    that cannot be reached gives a clear error within `timeout` seconds, not a hang.

    The probe runs in a child process: TensorFlow's device listing holds the
    interpreter lock while it waits for an unreachable master, so no thread of
    this process could enforce the time limit.
    """
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import json, sys; sys.path.insert(0, %r); from model import estimator; "
            "print(json.dumps(estimator.tpu_master(sys.argv[1])))" % repo)
    try:
        probe = subprocess.run([sys.executable, "-c", code, tpu_nodes], capture_output=True,
                               text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError("TPU %s did not answer within %d s; check the name and that this "
                        "VM can reach it" % (tpu_nodes, timeout))
    if probe.returncode != 0:
        lines = [line for line in probe.stderr.strip().splitlines() if line.strip()]
        raise UserError("cannot resolve TPU %s: %s" % (tpu_nodes, lines[-1] if lines else
                                                       "exit status %d" % probe.returncode))
    master, cores = json.loads(probe.stdout.strip().splitlines()[-1])
    return master, int(cores)
