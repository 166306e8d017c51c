# mpicloud idle-shutdown action, run by the runner on the head node when the cluster has been idle.
# -Mode deallocate (Azure): deallocates every VM (the head last) through Azure Resource Manager with the head node's
# managed identity, which the deployment grants a custom role holding only virtualMachines/read and deallocate/action
# on each VM. If that fails, the head shuts itself down: a VM stopped from inside is NOT deallocated and still bills.
# -Mode halt (AWS): shuts every worker down (the same administrator on every node may), then the head; EC2 stops
# instances that shut themselves down (InstanceInitiatedShutdownBehavior stop), disks kept.
param([ValidateSet('deallocate', 'halt')][string]$Mode = 'deallocate')
$ErrorActionPreference = 'Stop'
$data = Join-Path $env:ProgramData 'mpicloud'
$cluster = Get-Content -Raw -Path (Join-Path $data 'cluster.json') | ConvertFrom-Json
if ($Mode -eq 'halt') {
  foreach ($node in @($cluster.nodes | Where-Object { $_ -ne $env:COMPUTERNAME })) {
    shutdown.exe /s /m "\\$node" /t 0 /c 'mpicloud idle shutdown'
    Write-Output "mpicloud: shutting down $node"
  }
  shutdown.exe /s /t 60 /c 'mpicloud idle shutdown'
  exit 0
}
try {
  if (-not $cluster.arm) { throw 'no Resource Manager endpoint configured' }
  $imds = 'http://169.254.169.254/metadata'
  $headers = @{ Metadata = 'true' }
  $vm = Invoke-RestMethod -Headers $headers -Uri "$imds/instance/compute?api-version=2021-02-01"
  $resource = [uri]::EscapeDataString($cluster.arm)
  $token = Invoke-RestMethod -Headers $headers -Uri "$imds/identity/oauth2/token?api-version=2018-02-01&resource=$resource"
  $auth = @{ Authorization = 'Bearer ' + $token.access_token }
  $group = $cluster.arm.TrimEnd('/') + '/subscriptions/' + $vm.subscriptionId + '/resourceGroups/' + $vm.resourceGroupName
  $order = @($cluster.vms | Where-Object { $_ -ne $vm.name }) + @($vm.name)
  foreach ($name in $order) {
    $uri = $group + '/providers/Microsoft.Compute/virtualMachines/' + $name + '/deallocate?api-version=2024-11-01'
    Invoke-RestMethod -Method Post -Headers $auth -Uri $uri | Out-Null
    Write-Output "mpicloud: deallocating $name"
  }
} catch {
  Write-Output "mpicloud: deallocation failed ($_); shutting this VM down instead (it still bills compute)"
  shutdown.exe /s /t 60 /c 'mpicloud idle shutdown'
}
