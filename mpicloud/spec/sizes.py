"""Which VM sizes and instance types have RDMA (Azure InfiniBand, AWS EFA), from their names."""

from __future__ import annotations

import re

#: Azure series with InfiniBand on their 'r' sizes (Standard_HB120rs_v3, Standard_HC44rs, Standard_ND96asr_v4)
_AZURE_IB = re.compile(r"^Standard_(HB|HC|HX|ND)\d+[a-z]*r[a-z]*(_v\d+)?$", re.IGNORECASE)
#: EC2 families whose every size has EFA
_EFA_FAMILIES = re.compile(r"^(hpc\d+[a-z]*|p4d|p4de|p5|p5e|p5en|trn1|trn1n|trn2)\.")
#: elsewhere EFA comes with the largest sizes of the network-optimised and current families (c5n.18xlarge,
#: c6in.32xlarge, c7i.48xlarge, m7i.48xlarge, ...) and with bare metal
_EFA_SIZES = re.compile(r"^[a-z]+\d+[a-z-]*\.(18xlarge|24xlarge|32xlarge|48xlarge|metal(-\d+xl)?)$")


def azure_rdma(size: str) -> bool:
    """True for an Azure size with an InfiniBand interface (the hpcpack-template heuristic, HB/HC/HX/ND only)."""
    return bool(_AZURE_IB.match(size))


def efa_capable(instance_type: str) -> bool:
    """True for an EC2 instance type that supports EFA (a name rule; `aws ec2 describe-instance-types --filters
    Name=network-info.efa-supported,Values=true` is the authority)."""
    return bool(_EFA_FAMILIES.match(instance_type) or _EFA_SIZES.match(instance_type))
