# mpicloud: start the job runner on the head node at boot (scheduled task running as the admin user).
# The task logs on with the stored password, so mpiexec has network credentials. Once, after all launch
# services answer, `mpiexec -pwd ... -savecreds` stores the credentials on every node and the sealed
# password (machine-scope DPAPI, readable by SYSTEM and the admin user only) is deleted.
$ErrorActionPreference = 'Continue'
$data = Join-Path $env:ProgramData 'mpicloud'
$cluster = Get-Content -Raw -Path (Join-Path $data 'cluster.json') | ConvertFrom-Json
$blob = Join-Path $data 'savecreds.bin'
$log = Join-Path $data 'runner-task.log'
if (Test-Path $blob) {
  foreach ($node in $cluster.nodes) {
    for ($try = 0; $try -lt 360; $try++) {
      $tcp = New-Object Net.Sockets.TcpClient
      try { $tcp.Connect($node, 8677); break } catch { Start-Sleep -Seconds 10 } finally { $tcp.Dispose() }
    }
  }
  Add-Type -AssemblyName System.Security
  $plain = [Security.Cryptography.ProtectedData]::Unprotect([IO.File]::ReadAllBytes($blob), $null, 'LocalMachine')
  $secret = [Text.Encoding]::UTF8.GetString($plain)
  $hosts = @('-hosts', [string]$cluster.nodes.Count) + @($cluster.nodes | ForEach-Object { $_; '1' })
  $mpiexec = Join-Path ([Environment]::GetEnvironmentVariable('MSMPI_BIN', 'Machine')) 'mpiexec.exe'
  & $mpiexec @hosts -pwd $secret -savecreds cmd.exe /c exit 0 2>&1 | Out-File -Append -FilePath $log
  $code = $LASTEXITCODE
  "$(Get-Date -Format s) mpiexec -savecreds on $($cluster.nodes.Count) nodes: exit $code" | Out-File -Append -FilePath $log
  if ($code -eq 0) { Remove-Item -Force -Path $blob }
  $secret = $null
}
# supervise: restarts the runner whenever it dies; ends when it stops on purpose (idle shutdown)
& (Join-Path $data 'python\python.exe') (Join-Path $data 'runner.py') supervise --root $cluster.root
