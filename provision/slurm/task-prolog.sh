#!/bin/sh
# Slurm TaskProlog (mpicloud): every task sees the node it runs on as MPICLOUD_NODE. sbatch and srun export
# the submitting environment, which names the node the job was submitted from; the lines printed here
# ("export NAME=value") set the task's own.
echo "export MPICLOUD_NODE=$SLURMD_NODENAME"
