#!/bin/sh
# Build on the cluster, then launch over every node the runner allocated to this job.
set -e
mpicc -O2 -o allreduce allreduce.c
mpirun --hostfile "$MPICLOUD_HOSTFILE" -np "$MPICLOUD_NP" ./allreduce
