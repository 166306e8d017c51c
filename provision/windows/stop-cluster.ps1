# mpicloud idle-shutdown action, run by the runner on the head node when the cluster has been idle.
# Deallocates every VM (the head last) through Azure Resource Manager with the head node's managed identity,
# which the deployment grants a custom role holding only virtualMachines/read and deallocate/action on each VM.
# If that fails, the head shuts itself down: a VM stopped from inside is NOT deallocated and still bills compute.
$ErrorActionPreference = 'Stop'
$data = Join-Path $env:ProgramData 'mpicloud'
$cluster = Get-Content -Raw -Path (Join-Path $data 'cluster.json') | ConvertFrom-Json
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
