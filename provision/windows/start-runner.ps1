# mpicloud: start the job runner on the head node at boot (scheduled task running as the admin user).
# The task logs on with the stored password, so mpiexec has network credentials. After all launch services
# answer, `mpiexec -pwd ... -savecreds` stores the credentials on every node (retried with backoff); a run
# WITHOUT -pwd then proves they work, and only then the marker savecreds.ok (which the runner needs before it
# starts an MPI job) is written and the sealed password (machine-scope DPAPI, SYSTEM and the admin only) deleted.
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
  $marker = Join-Path $cluster.root 'savecreds.ok'
  for ($try = 1; $try -le 8; $try++) {
    & $mpiexec @hosts -pwd $secret -savecreds cmd.exe /c exit 0 2>&1 | Out-File -Append -FilePath $log
    $saved = $LASTEXITCODE
    & $mpiexec @hosts cmd.exe /c exit 0 2>&1 | Out-File -Append -FilePath $log
    $verified = $LASTEXITCODE
    "$(Get-Date -Format s) mpiexec -savecreds on $($cluster.nodes.Count) nodes: exit $saved; run without -pwd: exit $verified (try $try)" | Out-File -Append -FilePath $log
    if ($saved -eq 0 -and $verified -eq 0) {
      [IO.File]::WriteAllText($marker, (Get-Date -Format s))
      Remove-Item -Force -Path $blob
      break
    }
    Start-Sleep -Seconds ([Math]::Min(600, 15 * [Math]::Pow(2, $try)))
  }
  $secret = $null
}
# supervise: restarts the runner whenever it dies; ends when it stops on purpose (idle shutdown)
& (Join-Path $data 'python\python.exe') (Join-Path $data 'runner.py') supervise --root $cluster.root
