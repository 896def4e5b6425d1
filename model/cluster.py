"""Where training runs: local GPUs/CPUs, a multi-host TF cluster, or a TPU.

Multi-host: every process starts a tf.distribute.Server from TF_CONFIG (or
--worker_hosts/--task_index). Worker 0 (the chief) builds the graph with one
mesh slice per `/job:worker/task:k` device and drives the session; the other
workers only serve their devices. Unreachable hosts fail within a bounded time.
TPUs are reached through TPUEstimator (model/estimator.py); resolve_tpu finds them.
"""
import json
import os
import socket
import time

from model import mesh as meshlib
from model import runtime
from model.errors import UserError

CONNECT_TIMEOUT_S = 60


def cluster_from_args(args):
    """(worker host list, this task's index) from --worker_hosts or TF_CONFIG, else None."""
    if getattr(args, "worker_hosts", None):
        hosts = [h.strip() for h in args.worker_hosts.split(",") if h.strip()]
        return hosts, args.task_index
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
                                    "(same command with its --task_index)" % (host, timeout))
                time.sleep(0.5)


def devices_from_args(args, model_params):
    """Devices for this process, or None for a worker that only serves."""
    from model.compat import tf
    cluster = cluster_from_args(args)
    mesh_shape = getattr(args, "mesh_shape", None)
    cpu = getattr(args, "cpu_devices", None)
    if cluster is None:
        try:
            return runtime.Devices.local(model_params["num_pallarelizm"], mesh_shape, cpu)
        except ValueError as e:
            raise UserError(str(e))
    hosts, index = cluster
    if not 0 <= index < len(hosts):
        raise UserError("task index %d is outside the %d workers" % (index, len(hosts)))
    spec = tf.train.ClusterSpec({"worker": hosts})
    server = tf.distribute.Server(spec, job_name="worker", task_index=index,
                                  config=meshlib.session_config(cpu or 1))
    if index != 0:
        server.join()
        return None
    wait_for_hosts(hosts)
    names = meshlib.worker_device_names(len(hosts))
    shape = (meshlib.parse_mesh_shape(mesh_shape) if mesh_shape
             else meshlib.mesh_shape(len(names), min(model_params["num_pallarelizm"], len(names))))
    if shape.size != len(names):
        raise UserError("mesh %s needs %d devices; the cluster has %d workers"
                        % (shape, shape.size, len(names)))
    config = meshlib.session_config(cpu or 1)
    config.operation_timeout_in_ms = CONNECT_TIMEOUT_S * 1000 * 10
    return runtime.Devices(shape, names, config, target=server.target)


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
        lines = [l for l in probe.stderr.strip().splitlines() if l.strip()]
        raise UserError("cannot resolve TPU %s: %s" % (tpu_nodes, lines[-1] if lines else
                                                       "exit status %d" % probe.returncode))
    master, cores = json.loads(probe.stdout.strip().splitlines()[-1])
    return master, int(cores)
