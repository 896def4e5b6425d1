"""Mesh layout and device placement, kept out of the network's math.

Mesh shape: batch (N / num_pallarelizm) x model (num_pallarelizm) over N devices.
Layout: the batch dimension is split over `batch`; attention heads and experts
over `model`. GPUs and CPUs use mesh-tensorflow's placement implementation.
"""
from model.compat import mtf, placement_mesh_impl, tf

LAYOUT = "batch:batch;header:model;experts:model"


def mesh_shape(num_devices, num_pallarelizm):
    if num_devices % num_pallarelizm:
        raise ValueError("%d devices cannot be split into model-parallel groups of %d"
                         % (num_devices, num_pallarelizm))
    return mtf.convert_to_shape("batch:%d;model:%d" % (num_devices // num_pallarelizm,
                                                        num_pallarelizm))


def parse_mesh_shape(text):
    """'batch:2;model:2' or '2x2' -> mtf.Shape."""
    if "x" in text and ":" not in text:
        b, m = text.split("x")
        text = "batch:%s;model:%s" % (b, m)
    shape = mtf.convert_to_shape(text)
    if [d.name for d in shape.dims] != ["batch", "model"]:
        raise ValueError("mesh shape must name dimensions batch and model, got %r" % text)
    return shape


def session_config(num_cpu_devices=1):
    """Split the CPU into logical devices so model parallelism runs on a laptop."""
    config = tf.ConfigProto(device_count={"CPU": max(1, num_cpu_devices)},
                            allow_soft_placement=True)
    config.gpu_options.allow_growth = True
    return config


def cpu_device_names(n, job=None):
    prefix = "/job:%s/task:0" % job if job else ""
    return ["%s/device:CPU:%d" % (prefix, i) for i in range(n)]


def worker_device_names(num_workers, per_worker_device="CPU:0", job="worker"):
    return ["/job:%s/task:%d/device:%s" % (job, k, per_worker_device) for k in range(num_workers)]


def placement(shape, devices):
    """Placement mesh implementation over `devices` (len = mesh size)."""
    if len(devices) != shape.size:
        raise ValueError("mesh %s needs %d devices, got %d" % (shape, shape.size, len(devices)))
    return placement_mesh_impl.PlacementMeshImpl(shape, mtf.convert_to_layout_rules(LAYOUT),
                                                 devices)


def new_mesh(graph=None):
    graph = graph or mtf.Graph()
    return graph, mtf.Mesh(graph, "gptsan")
