"""``npu-proxy doctor``'s GPU checks: the GPU is seen when it is wanted, with the driver
advice for this system, and its device files (``/dev/dri/renderD*``) may be opened."""

from __future__ import annotations

from npu_proxy.checks import DoctorCheck
from npu_proxy_openvino.doctor import device_doctor_checks

#: What to do when OpenVINO does not see the GPU, by ``platform.system()``.
GPU_DRIVER_FIX = {
    "Linux": "install Intel's compute runtime (Debian/Ubuntu: intel-opencl-icd and "
             "libze-intel-gpu1) and check /dev/dri/renderD128",
    "Windows": "install or update the Intel graphics driver",
}


def doctor_checks() -> list[DoctorCheck]:
    """The GPU's checks (they ask OpenVINO only when the doctor runs them)."""
    return device_doctor_checks("GPU", GPU_DRIVER_FIX, files="dri/renderD*")
