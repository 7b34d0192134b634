"""``npu-proxy doctor``'s NPU checks: the NPU is seen when it is wanted, with the driver
advice for this system, and its device files (``/dev/accel/accel*``) may be opened."""

from __future__ import annotations

from npu_proxy.checks import DoctorCheck
from npu_proxy_openvino.doctor import device_doctor_checks

#: What to do when OpenVINO does not see the NPU, by ``platform.system()``.
NPU_DRIVER_FIX = {
    "Linux": "load the NPU driver (kernel 6.3+ with intel_vpu: 'sudo modprobe intel_vpu'; "
             "user space: the linux-npu-driver packages) and check /dev/accel/accel0",
    "Windows": "install or update the Intel NPU driver (Device Manager > Neural processors)",
}


def doctor_checks() -> list[DoctorCheck]:
    """The NPU's checks (they ask OpenVINO only when the doctor runs them)."""
    return device_doctor_checks("NPU", NPU_DRIVER_FIX, files="accel/accel*")
