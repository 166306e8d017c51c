#!/bin/bash
# mpicloud deployment values from the instance's own tags over IMDSv2 (instance metadata tags enabled), so the
# same user data serves Pulumi and CloudFormation: writes /etc/mpicloud/node.env and the EC2 key pair's public
# key to /etc/mpicloud/admin.pub (the cluster user's login key). usage: node-env.sh
set -euo pipefail
imds=http://169.254.169.254/latest
token=$(curl -fsS --retry 10 -X PUT "$imds/api/token" -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
md() { curl -fsS --retry 10 -H "X-aws-ec2-metadata-token: $token" "$imds/meta-data/$1"; }
install -d -m 755 /etc/mpicloud
{
  echo "MPICLOUD_COUNT=$(md tags/instance/mpicloud:nodes)"
  echo "MPICLOUD_SLOTS=$(md tags/instance/mpicloud:slots)"
  echo "MPICLOUD_SSM_PREFIX=$(md tags/instance/mpicloud:ssm-prefix)"
  echo "MPICLOUD_IDLE_MINUTES=$(md tags/instance/mpicloud:idle-minutes)"
  echo "MPICLOUD_KMS_KEY=$(md tags/instance/mpicloud:kms-key)"
  # the head node only: its shared directory's own EBS volume
  echo "MPICLOUD_SHARED_VOLUME=$(md tags/instance/mpicloud:shared-volume 2>/dev/null || true)"
  # an elastic cluster's head only: the compute nodes' launch template; the cluster tag names the cluster
  echo "MPICLOUD_LAUNCH_TEMPLATE=$(md tags/instance/mpicloud:launch-template 2>/dev/null || true)"
  echo "MPICLOUD_CLUSTER=$(md tags/instance/mpicloud:cluster)"
  echo "MPICLOUD_REGION=$(md placement/region)"
  echo "MPICLOUD_PRIVATE_IP=$(md local-ipv4)"
} > /etc/mpicloud/node.env
md public-keys/0/openssh-key > /etc/mpicloud/admin.pub
