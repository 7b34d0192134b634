<#
.SYNOPSIS
    Install npu-proxy on Windows: a virtual environment, automatic start at logon (or at
    boot), and a firewall rule that lets WSL2, and only WSL2, reach port 11435.

.DESCRIPTION
    Run from an npu-proxy checkout in an elevated PowerShell (Windows PowerShell 5.1 or
    PowerShell 7):

        powershell -NoProfile -ExecutionPolicy Bypass -File scripts\install_windows.ps1

    It creates, under -InstallDir (default %ProgramData%\npu-proxy):
      venv\              the Python environment: the core and every plugin, with the
                         dependency versions of uv.lock (built with uv; uv is bootstrapped
                         with pip when it is not installed)
      python\            a private Python (uv-managed) unless -Python names one
      env                NPU_PROXY_* settings, one NAME=value a line; readable only by
                         Administrators, SYSTEM and the account that runs the server;
                         never overwritten (settings added later are appended commented)
      start-npu-proxy.ps1  reads env and runs 'npu-proxy serve', restarting it after a crash
      models\            the model store (NPU_PROXY_MODEL_PATH)
      logs\              npu-proxy.out.log / npu-proxy.err.log (previous run: *.1)
    and registers a Scheduled Task "npu-proxy" that starts the server when you log on
    (-StartAt Logon, the default: runs as you, no password stored) or when the machine
    boots (-StartAt Startup: runs as LOCAL SERVICE). With -UseNssm and nssm.exe on the
    PATH it registers a Windows service through NSSM instead.

    The firewall rule allows TCP -Port only from the WSL2 virtual network, found with
    Get-NetIPAddress -InterfaceAlias 'vEthernet (WSL*)' (start WSL once first), or given
    with -WslSubnet. With WSL's mirrored networking, WSL2 reaches the server at
    127.0.0.1 and no rule is needed (docs/wsl2.md).

    Running it again upgrades the installation and changes nothing else. -WhatIf shows
    every change without making it.

.PARAMETER InstallDir
    Where everything is installed. Default: %ProgramData%\npu-proxy.
.PARAMETER Source
    The npu-proxy checkout to install. Default: the folder above this script.
.PARAMETER Python
    A Python 3.11+ executable for the virtual environment. Default: a private Python
    that uv downloads into InstallDir\python.
.PARAMETER Port
    The TCP port (NPU_PROXY_PORT for a new env file, and the firewall rule). Default 11435.
.PARAMETER WslSubnet
    The WSL2 network in CIDR form (e.g. 172.28.160.0/20), instead of detecting it.
.PARAMETER StartAt
    Logon (default): start when the installing user logs on, as that user.
    Startup: start at boot, as NT AUTHORITY\LOCAL SERVICE.
.PARAMETER UseNssm
    Register a Windows service with NSSM (nssm.exe must be on the PATH) instead of a
    Scheduled Task. The service runs as LOCAL SERVICE; re-run this script after
    editing the env file, since NSSM keeps its own copy of the variables.
.PARAMETER NoFirewall
    Do not create the firewall rule.
.PARAMETER FirewallOnly
    Only create or update the firewall rule (WSL2 may pick another subnet after a reboot).
.PARAMETER GenerateApiKey
    Put a random NPU_PROXY_API_KEY in the env file unless one is set.
.PARAMETER NoStart
    Register the task or service but do not start it now.
.PARAMETER Uninstall
    Stop and remove the task or service, the firewall rule and the Python environment.
    The models and the env file are kept unless -Purge is given too.
.PARAMETER Purge
    With -Uninstall: remove the whole InstallDir, models and settings included.

.EXAMPLE
    .\scripts\install_windows.ps1 -WhatIf
.EXAMPLE
    .\scripts\install_windows.ps1 -GenerateApiKey
.EXAMPLE
    .\scripts\install_windows.ps1 -FirewallOnly
.EXAMPLE
    .\scripts\install_windows.ps1 -Uninstall
#>
[CmdletBinding(SupportsShouldProcess = $true)]
param(
    [string]$InstallDir = (Join-Path $env:ProgramData 'npu-proxy'),
    [string]$Source = (Split-Path -Parent $PSScriptRoot),
    [string]$Python = '',
    [ValidateRange(1, 65535)]
    [int]$Port = 11435,
    [string]$WslSubnet = '',
    [ValidateSet('Logon', 'Startup')]
    [string]$StartAt = 'Logon',
    [switch]$UseNssm,
    [switch]$NoFirewall,
    [switch]$FirewallOnly,
    [switch]$GenerateApiKey,
    [switch]$NoStart,
    [switch]$Uninstall,
    [switch]$Purge
)

Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'

$TaskName = 'npu-proxy'
$ServiceName = 'npu-proxy'
$FirewallRuleName = 'npu-proxy-wsl2'
$VenvDir = Join-Path $InstallDir 'venv'
$ToolsDir = Join-Path $InstallDir 'tools'
$PythonDir = Join-Path $InstallDir 'python'
$ModelsDir = Join-Path $InstallDir 'models'
$LogsDir = Join-Path $InstallDir 'logs'
$EnvFile = Join-Path $InstallDir 'env'
$Launcher = Join-Path $InstallDir 'start-npu-proxy.ps1'
$Utf8NoBom = New-Object System.Text.UTF8Encoding($false)
# Well-known SIDs, so the script works whatever the system language.
$AdministratorsSid = '*S-1-5-32-544'
$SystemSid = '*S-1-5-18'
$LocalServiceSid = '*S-1-5-19'
$LocalServiceAccount = 'NT AUTHORITY\LocalService'

function Write-Step([string]$Message) { Write-Host "npu-proxy: $Message" }

function Test-Administrator {
    $identity = [Security.Principal.WindowsIdentity]::GetCurrent()
    $principal = New-Object Security.Principal.WindowsPrincipal($identity)
    return $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)
}

# The account the server runs as, for the task principal and the file permissions.
function Get-RunAsAccount {
    if ($UseNssm -or $StartAt -eq 'Startup') { return $LocalServiceAccount }
    return "$env:USERDOMAIN\$env:USERNAME"
}

function Get-RunAsGrantee {
    if ($UseNssm -or $StartAt -eq 'Startup') { return $LocalServiceSid }
    return "$env:USERDOMAIN\$env:USERNAME"
}

# Run an external program; a non-zero exit stops the script with its name.
function Invoke-Native {
    param([string]$FilePath, [string[]]$Arguments)
    & $FilePath @Arguments
    if ($LASTEXITCODE -ne 0) {
        throw "$FilePath $($Arguments -join ' ') failed with exit code $LASTEXITCODE"
    }
}

# Write a text file only when its content changes (so a second run changes nothing).
function Set-FileContent {
    param([string]$Path, [string]$Content)
    if ((Test-Path -LiteralPath $Path) -and
        ((Get-Content -LiteralPath $Path -Raw) -eq $Content)) {
        Write-Step "unchanged $Path"
        return $false
    }
    if ($PSCmdlet.ShouldProcess($Path, 'write file')) {
        [IO.File]::WriteAllText($Path, $Content, $Utf8NoBom)
        Write-Step "wrote $Path"
    }
    return $true
}

function New-Directory([string]$Path) {
    if (-not (Test-Path -LiteralPath $Path)) {
        if ($PSCmdlet.ShouldProcess($Path, 'create directory')) {
            New-Item -ItemType Directory -Path $Path -Force | Out-Null
        }
    }
}

# --- the env file ----------------------------------------------------------------------

# Each core setting: name, the value shown, and why one would change it. Same list as
# scripts/install_linux.sh; MODEL_PATH is set (not commented) for this installation.
$EnvSettings = @(
    @('HOST', '0.0.0.0', 'Bind address: 0.0.0.0 lets WSL2 in (with the firewall rule); 127.0.0.1 keeps it on this machine.'),
    @('PORT', '11435', 'TCP port (the firewall rule opens the port given to install_windows.ps1).'),
    @('API_KEY', '', "When set, every route but /health needs 'Authorization: Bearer KEY' or 'x-api-key: KEY'."),
    @('ALLOWED_CLIENTS', '127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,169.254.0.0/16,fe80::/10,fc00::/7', "Client addresses/CIDR ranges allowed to connect ('*' allows all)."),
    @('ALLOWED_HOSTS', '', "Extra Host-header names accepted besides loopback, private addresses and this machine's names."),
    @('ORIGINS', 'http://localhost,https://localhost,http://localhost:*,https://localhost:*,http://127.0.0.1,https://127.0.0.1,http://127.0.0.1:*,https://127.0.0.1:*,http://[::1],http://[::1]:*,http://0.0.0.0,http://0.0.0.0:*,app://*,file://*,tauri://*,vscode-webview://*,vscode-file://*', "Browser origins allowed by CORS ('*' wildcards)."),
    @('MAX_BODY', '32MiB', 'Largest request body accepted; larger ones get 413.'),
    @('HEADER_TIMEOUT', '10', 'Seconds a client has to send a request line and headers; slower ones get 408 and are disconnected.'),
    @('BODY_TIMEOUT', '30', 'Seconds a request body may take to arrive, plus one second per KiB received.'),
    @('MAX_CLIENT_CONNECTIONS', '256', 'Open connections one client address may hold; one more gets 503.'),
    @('MAX_EMBEDDING_INPUTS', '2048', 'Most inputs one embedding request may hold; more is a 400.'),
    @('MAX_BLOB', '64GiB', 'Largest file uploaded as a blob (ollama create); larger ones get 413.'),
    @('BLOB_TTL', '3600', 'Seconds an uploaded blob that no model uses is kept.'),
    @('DEVICE', 'NPU', 'Preferred device: NPU, GPU or CPU.'),
    @('FALLBACK_DEVICE', 'auto', 'Fallback device; auto tries NPU, GPU, CPU in order.'),
    @('REAL_INFERENCE', '1', '1: real inference with OpenVINO; 0: the deterministic mock backend.'),
    @('INFERENCE_TIMEOUT', '180', 'Seconds a generation may run before it is stopped.'),
    @('SHUTDOWN_GRACE', '5', 'Seconds a stopping server lets streams in progress finish before it ends them.'),
    @('MAX_PROMPT_LEN', '4096', 'Prompt tokens the NPU is compiled for.'),
    @('MIN_RESPONSE_LEN', '128', 'Response tokens the NPU is compiled for.'),
    @('TOKEN_LIMIT', '1800', 'Prompts above this many tokens go to the fallback device (token_threshold routing).'),
    @('EMBEDDING_MODEL', 'all-minilm:latest', 'Embedding model used when a request names none; warmed with WARMUP.'),
    @('EMBEDDING_DEVICE', 'CPU', 'Preferred device for embeddings.'),
    @('EMBEDDING_CACHE_SIZE', '1000', 'Embeddings kept in the LRU cache (0 disables it).'),
    @('DEFAULT_MODEL', 'smollm2:135m', 'Model loaded by warm-up.'),
    @('WARMUP', '0', '1: load the default and the embedding model at startup, so first requests are fast.'),
    @('KEEP_ALIVE', '5m', 'How long a model stays loaded after use (negative: forever).'),
    @('MAX_QUEUE', '512', 'Requests that may wait per device before 503.'),
    @('MAX_TOKENS', '2048', 'Most tokens a generation produces when the request sets no limit (0: the context).'),
    @('MAX_PARALLEL', '4', 'Concurrent generations per CPU/GPU device (the NPU always runs one).'),
    @('GENERIC_TOOLS', '0', '1: serve tools also for models whose chat template renders none, through a generic tool prompt (0: they refuse tools).'),
    @('ROUTING', 'token_threshold', 'Routing policy, by name.'),
    @('PLUGINS', 'ollama,openai,anthropic,openvino,openvino-npu,openvino-gpu,openvino-cpu,prometheus', 'Plugins to load. Unset or empty (the default): every installed plugin loads.'),
    @('LOG_LEVEL', 'INFO', 'DEBUG, INFO, WARNING or ERROR.')
)

function Get-EnvEntryLines([object[]]$Entry) {
    return @('', "# $($Entry[2])", "# NPU_PROXY_$($Entry[0])=$($Entry[1])")
}

function New-ApiKey {
    $bytes = New-Object byte[] 32
    $rng = [Security.Cryptography.RandomNumberGenerator]::Create()
    try { $rng.GetBytes($bytes) } finally { $rng.Dispose() }
    return [Convert]::ToBase64String($bytes).TrimEnd('=').Replace('+', '-').Replace('/', '_')
}

function Write-EnvFile {
    $existing = $null
    if (Test-Path -LiteralPath $EnvFile) { $existing = Get-Content -LiteralPath $EnvFile -Raw }
    $lines = New-Object System.Collections.Generic.List[string]
    if ($null -eq $existing) {
        $lines.AddRange([string[]]@(
            '# npu-proxy settings, read by start-npu-proxy.ps1 (and by this script for NSSM).',
            "# Each commented line shows a built-in default. To change a setting, remove the '#',",
            "# edit the value, then restart: Stop-ScheduledTask $TaskName; Start-ScheduledTask $TaskName",
            '# install_windows.ps1 never changes a value here; it only appends settings it added later.',
            '',
            '# The model store of this installation.',
            "NPU_PROXY_MODEL_PATH=$ModelsDir"))
        if ($Port -ne 11435) {
            $lines.AddRange([string[]]@('', '# The port given to install_windows.ps1.', "NPU_PROXY_PORT=$Port"))
        }
        foreach ($entry in $EnvSettings) { $lines.AddRange([string[]](Get-EnvEntryLines $entry)) }
    } else {
        # Keep every line; append only the settings the file does not mention yet.
        $lines.AddRange([string[]]($existing.TrimEnd("`r", "`n") -split "`r?`n"))
        $missing = @()
        foreach ($entry in $EnvSettings) {
            if ($existing -notmatch "(?m)^[#\s]*NPU_PROXY_$($entry[0])=") {
                $missing += Get-EnvEntryLines $entry
            }
        }
        if ($missing.Count -gt 0) {
            $lines.AddRange([string[]]@('', '# Settings added by a newer install_windows.ps1:'))
            $lines.AddRange([string[]]$missing)
        }
    }
    $hasKey = @($lines | Where-Object { $_ -match '^\s*NPU_PROXY_API_KEY=\S' }).Count -gt 0
    if ($GenerateApiKey -and -not $hasKey) {
        $lines.AddRange([string[]]@('', '# Generated by -GenerateApiKey.', "NPU_PROXY_API_KEY=$(New-ApiKey)"))
        Write-Step "an API key is written to $EnvFile; clients send it as 'Authorization: Bearer KEY'"
    }
    $content = ($lines -join "`r`n") + "`r`n"
    $changed = Set-FileContent -Path $EnvFile -Content $content
    # Like mode 0640 on Linux: the API key in it is a secret.
    if ((Test-Path -LiteralPath $EnvFile) -and $PSCmdlet.ShouldProcess($EnvFile, 'restrict access')) {
        Invoke-Native icacls.exe @($EnvFile, '/inheritance:r', '/grant:r',
            "${AdministratorsSid}:F", "${SystemSid}:F", "$(Get-RunAsGrantee):R") | Out-Null
    }
    return $changed
}

# Settings from the env file, as NAME=value strings (for NSSM).
function Read-EnvFile {
    $pairs = @()
    foreach ($line in (Get-Content -LiteralPath $EnvFile)) {
        $text = $line.Trim()
        if ($text -eq '' -or $text.StartsWith('#') -or $text.IndexOf('=') -lt 1) { continue }
        $pairs += $text
    }
    return $pairs
}

# --- the launcher ----------------------------------------------------------------------

$LauncherContent = @'
# Written by scripts/install_windows.ps1: load the settings in 'env' and run npu-proxy,
# restarting it after a crash (at most 5 times in 10 minutes). Logs are in logs\.
$ErrorActionPreference = 'Stop'
$here = Split-Path -Parent $MyInvocation.MyCommand.Path
foreach ($line in Get-Content -LiteralPath (Join-Path $here 'env')) {
    $text = $line.Trim()
    $at = $text.IndexOf('=')
    if ($text -eq '' -or $text.StartsWith('#') -or $at -lt 1) { continue }
    $name = $text.Substring(0, $at).Trim()
    $value = $text.Substring($at + 1).Trim()
    if ($value.Length -ge 2 -and ($value[0] -eq '"' -or $value[0] -eq "'") -and $value[-1] -eq $value[0]) {
        $value = $value.Substring(1, $value.Length - 2)
    }
    [Environment]::SetEnvironmentVariable($name, $value, 'Process')
}
$exe = Join-Path $here 'venv\Scripts\npu-proxy.exe'
$logs = Join-Path $here 'logs'
$crashes = New-Object System.Collections.Generic.List[datetime]
while ($true) {
    foreach ($stream in 'out', 'err') {
        $log = Join-Path $logs "npu-proxy.$stream.log"
        # Keep the previous run's log; a log still held open is simply appended to.
        try { Move-Item -LiteralPath $log -Destination "$log.1" -Force } catch { }
    }
    $process = Start-Process -FilePath $exe -ArgumentList 'serve' -NoNewWindow -PassThru `
        -RedirectStandardOutput (Join-Path $logs 'npu-proxy.out.log') `
        -RedirectStandardError (Join-Path $logs 'npu-proxy.err.log')
    $null = $process.Handle  # without a handle taken now, ExitCode is empty after exit
    $process.WaitForExit()
    if ($process.ExitCode -eq 0) { exit 0 }
    $now = Get-Date
    $crashes.Add($now)
    $recent = @($crashes | Where-Object { $_ -gt $now.AddMinutes(-10) })
    if ($recent.Count -ge 5) { exit $process.ExitCode }
    Start-Sleep -Seconds 5
}
'@

# --- the Python environment ------------------------------------------------------------

function Get-WorkspaceMembers {
    $dirs = @(Join-Path $Source 'core')
    $dirs += @(Get-ChildItem -LiteralPath (Join-Path $Source 'plugins') -Directory |
        Where-Object { Test-Path -LiteralPath (Join-Path $_.FullName 'pyproject.toml') } |
        ForEach-Object { $_.FullName })
    $members = @()
    foreach ($dir in $dirs) {
        $match = Select-String -LiteralPath (Join-Path $dir 'pyproject.toml') -Pattern '^name\s*=\s*"([^"]+)"' |
            Select-Object -First 1
        $members += [pscustomobject]@{ Dir = $dir; Name = $match.Matches[0].Groups[1].Value }
    }
    return $members
}

# uv reads uv.lock (which keeps the embedded-model packages' unused heavy dependencies
# out) and builds the wheels; bootstrapped with pip when it is not installed.
function Get-Uv {
    $uv = Get-Command uv.exe -ErrorAction SilentlyContinue
    if ($uv) { return $uv.Source }
    $bootstrap = Join-Path $ToolsDir 'Scripts\uv.exe'
    if (Test-Path -LiteralPath $bootstrap) { return $bootstrap }
    $basePython = $Python
    if (-not $basePython) {
        $launcher = Get-Command py.exe -ErrorAction SilentlyContinue
        if ($launcher) { $basePython = (& $launcher.Source -3 -c 'import sys; print(sys.executable)').Trim() }
    }
    if (-not $basePython) {
        throw 'uv is not installed and no Python was found to install it with: install uv ' +
            '(winget install astral-sh.uv) or Python 3.11+ (winget install Python.Python.3.12)'
    }
    Write-Step "uv not found: installing it into $ToolsDir"
    Invoke-Native $basePython @('-m', 'venv', $ToolsDir)
    Invoke-Native (Join-Path $ToolsDir 'Scripts\python.exe') @('-m', 'pip', 'install', '--quiet', 'uv')
    return $bootstrap
}

function Install-PythonEnvironment {
    if (-not ((Test-Path -LiteralPath (Join-Path $Source 'core\pyproject.toml')) -and
              (Test-Path -LiteralPath (Join-Path $Source 'uv.lock')))) {
        throw "$Source is not an npu-proxy checkout (no core\pyproject.toml or uv.lock)"
    }
    $members = @(Get-WorkspaceMembers)
    $names = @($members | ForEach-Object { $_.Name })
    if (-not $PSCmdlet.ShouldProcess($VenvDir, "install $($names -join ', ')")) { return }
    $uv = Get-Uv
    $work = Join-Path ([IO.Path]::GetTempPath()) ("npu-proxy-install-" + [guid]::NewGuid())
    New-Item -ItemType Directory -Path $work | Out-Null
    try {
        $requirements = Join-Path $work 'requirements.txt'
        $exportArgs = @('export', '--project', $Source, '--frozen', '--no-dev', '--no-emit-workspace',
            '--no-hashes', '--no-header', '--no-annotate', '--quiet', '-o', $requirements)
        foreach ($name in $names) { $exportArgs += @('--package', $name) }
        Invoke-Native $uv $exportArgs
        foreach ($member in $members) {
            Invoke-Native $uv @('build', '--quiet', '--wheel', '--out-dir', (Join-Path $work 'wheels'), $member.Dir)
        }
        $wheels = @(Get-ChildItem -LiteralPath (Join-Path $work 'wheels') -Filter '*.whl' |
            ForEach-Object { $_.FullName })
        [IO.File]::AppendAllText($requirements, (($wheels -join "`n") + "`n"), $Utf8NoBom)
        if ($Python) {
            Invoke-Native $uv @('venv', '--quiet', '--allow-existing', '--python', $Python, $VenvDir)
        } else {
            # A private Python under InstallDir: readable by LOCAL SERVICE, unaffected by
            # changes to the user's own Python.
            $env:UV_PYTHON_INSTALL_DIR = $PythonDir
            Invoke-Native $uv @('venv', '--quiet', '--allow-existing', '--managed-python',
                '--python', '3.12', $VenvDir)
        }
        # sync: exactly the lock plus our wheels; our packages are reinstalled because a
        # checkout changes without a version bump.
        $syncArgs = @('pip', 'sync', '--quiet', '--compile-bytecode', '--python', (Join-Path $VenvDir 'Scripts\python.exe'))
        foreach ($name in $names) { $syncArgs += @('--reinstall-package', $name) }
        Invoke-Native $uv ($syncArgs + @($requirements))
        $version = & (Join-Path $VenvDir 'Scripts\npu-proxy.exe') --version
        if ($LASTEXITCODE -ne 0) { throw 'the installed npu-proxy does not start' }
        Write-Step "installed $version into $VenvDir"
    } finally {
        Remove-Item -LiteralPath $work -Recurse -Force -ErrorAction SilentlyContinue
    }
}

# --- start at logon or boot ------------------------------------------------------------

function Stop-Server {
    $task = Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
    if ($task -and $task.State -eq 'Running' -and $PSCmdlet.ShouldProcess($TaskName, 'stop task')) {
        Stop-ScheduledTask -TaskName $TaskName
    }
    $service = Get-Service -Name $ServiceName -ErrorAction SilentlyContinue
    if ($service -and $service.Status -eq 'Running' -and $PSCmdlet.ShouldProcess($ServiceName, 'stop service')) {
        Stop-Service -Name $ServiceName
    }
    # Ending the task ends the launcher; the Python processes it started are ended here:
    # those running the venv's programs or the launcher (never this script itself).
    $venvPattern = '*' + [WildcardPattern]::Escape((Join-Path $VenvDir 'Scripts')) + '*'
    $launcherPattern = '*' + [WildcardPattern]::Escape($Launcher) + '*'
    $left = @(Get-CimInstance Win32_Process -ErrorAction SilentlyContinue |
        Where-Object { $_.ProcessId -ne $PID -and $_.CommandLine -and
            ($_.CommandLine -like $venvPattern -or $_.CommandLine -like $launcherPattern) })
    foreach ($process in $left) {
        if ($PSCmdlet.ShouldProcess("$($process.Name) ($($process.ProcessId))", 'stop process')) {
            Stop-Process -Id $process.ProcessId -Force -ErrorAction SilentlyContinue
        }
    }
}

function Register-ServerTask {
    $account = Get-RunAsAccount
    $powershell = Join-Path $env:SystemRoot 'System32\WindowsPowerShell\v1.0\powershell.exe'
    $action = New-ScheduledTaskAction -Execute $powershell -WorkingDirectory $InstallDir `
        -Argument "-NoProfile -NonInteractive -ExecutionPolicy Bypass -WindowStyle Hidden -File `"$Launcher`""
    if ($StartAt -eq 'Startup') {
        $trigger = New-ScheduledTaskTrigger -AtStartup
        $principal = New-ScheduledTaskPrincipal -UserId $account -LogonType ServiceAccount -RunLevel Limited
    } else {
        $trigger = New-ScheduledTaskTrigger -AtLogOn -User $account
        $principal = New-ScheduledTaskPrincipal -UserId $account -LogonType Interactive -RunLevel Limited
    }
    # No time limit (the default stops a task after 72 hours), no battery rules.
    $settings = New-ScheduledTaskSettingsSet -ExecutionTimeLimit ([TimeSpan]::Zero) `
        -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries -StartWhenAvailable `
        -MultipleInstances IgnoreNew -RestartCount 3 -RestartInterval (New-TimeSpan -Minutes 1)
    if ($PSCmdlet.ShouldProcess($TaskName, "register a scheduled task at $StartAt as $account")) {
        Register-ScheduledTask -TaskName $TaskName -Action $action -Trigger $trigger `
            -Principal $principal -Settings $settings `
            -Description 'npu-proxy: Ollama/OpenAI/Anthropic APIs on the Intel NPU, GPU and CPU' -Force | Out-Null
        Write-Step "scheduled task '$TaskName' starts the server at $StartAt as $account"
    }
}

function Register-ServerService {
    $nssm = Get-Command nssm.exe -ErrorAction SilentlyContinue
    if (-not $nssm) { throw '-UseNssm: nssm.exe is not on the PATH (https://nssm.cc, or: winget install NSSM.NSSM)' }
    $nssm = $nssm.Source
    if (-not $PSCmdlet.ShouldProcess($ServiceName, "register a service with NSSM as $LocalServiceAccount")) { return }
    if (-not (Get-Service -Name $ServiceName -ErrorAction SilentlyContinue)) {
        Invoke-Native $nssm @('install', $ServiceName, (Join-Path $VenvDir 'Scripts\npu-proxy.exe'), 'serve')
    }
    Invoke-Native $nssm @('set', $ServiceName, 'Application', (Join-Path $VenvDir 'Scripts\npu-proxy.exe'))
    Invoke-Native $nssm @('set', $ServiceName, 'AppParameters', 'serve')
    Invoke-Native $nssm @('set', $ServiceName, 'AppDirectory', $InstallDir)
    Invoke-Native $nssm (@('set', $ServiceName, 'AppEnvironmentExtra') + @(Read-EnvFile))
    Invoke-Native $nssm @('set', $ServiceName, 'ObjectName', $LocalServiceAccount)
    Invoke-Native $nssm @('set', $ServiceName, 'Start', 'SERVICE_AUTO_START')
    Invoke-Native $nssm @('set', $ServiceName, 'AppStdout', (Join-Path $LogsDir 'npu-proxy.out.log'))
    Invoke-Native $nssm @('set', $ServiceName, 'AppStderr', (Join-Path $LogsDir 'npu-proxy.err.log'))
    Invoke-Native $nssm @('set', $ServiceName, 'AppRotateFiles', '1')
    Invoke-Native $nssm @('set', $ServiceName, 'AppRotateOnline', '1')
    Invoke-Native $nssm @('set', $ServiceName, 'AppRotateBytes', '10485760')
    Write-Step "service '$ServiceName' (NSSM) starts the server at boot as $LocalServiceAccount"
}

function Start-Server {
    if ($NoStart) { Write-Step 'not started (-NoStart)'; return }
    if (-not $PSCmdlet.ShouldProcess('npu-proxy', 'start')) { return }
    if ($UseNssm) { Start-Service -Name $ServiceName } else { Start-ScheduledTask -TaskName $TaskName }
    Write-Step "started; check it with: curl.exe http://127.0.0.1:$Port/health"
}

# Grant the account that runs the server write access to the models and logs.
function Grant-DataAccess {
    foreach ($dir in @($ModelsDir, $LogsDir)) {
        if ((Test-Path -LiteralPath $dir) -and $PSCmdlet.ShouldProcess($dir, "grant modify to $(Get-RunAsAccount)")) {
            Invoke-Native icacls.exe @($dir, '/grant', "$(Get-RunAsGrantee):(OI)(CI)M") | Out-Null
        }
    }
}

# --- the firewall ----------------------------------------------------------------------

# The WSL2 NAT network (e.g. 172.28.160.0/20) from the host side of its virtual adapter.
function Get-WslSubnet {
    $address = Get-NetIPAddress -InterfaceAlias 'vEthernet (WSL*)' -AddressFamily IPv4 -ErrorAction SilentlyContinue |
        Select-Object -First 1
    if (-not $address) { return $null }
    $bytes = [Net.IPAddress]::Parse($address.IPAddress).GetAddressBytes()
    [Array]::Reverse($bytes)
    $ip = [BitConverter]::ToUInt32($bytes, 0)
    $length = [int]$address.PrefixLength
    $mask = [uint32]0
    if ($length -gt 0) { $mask = [uint32]([math]::Pow(2, 32) - [math]::Pow(2, 32 - $length)) }
    $network = [BitConverter]::GetBytes([uint32]($ip -band $mask))
    [Array]::Reverse($network)
    return '{0}/{1}' -f (New-Object Net.IPAddress(, $network)).ToString(), $length
}

function Set-FirewallRule {
    $subnet = $WslSubnet
    if (-not $subnet) { $subnet = Get-WslSubnet }
    if (-not $subnet) {
        Write-Warning ("no WSL2 network adapter ('vEthernet (WSL*)') found: WSL2 is not running, or " +
            'it uses mirrored networking (then 127.0.0.1 works and no rule is needed). Start WSL ' +
            "(wsl.exe -e true) and run this script with -FirewallOnly, or pass -WslSubnet.")
        return
    }
    $existing = Get-NetFirewallRule -Name $FirewallRuleName -ErrorAction SilentlyContinue
    if ($existing) {
        $ports = ($existing | Get-NetFirewallPortFilter).LocalPort
        $remote = @(($existing | Get-NetFirewallAddressFilter).RemoteAddress)
        if ("$ports" -eq "$Port" -and $remote.Count -eq 1 -and
            (Test-SameNetwork $remote[0] $subnet)) {
            Write-Step "unchanged firewall rule '$FirewallRuleName' (TCP $Port from $subnet)"
            return
        }
        if ($PSCmdlet.ShouldProcess($FirewallRuleName, 'replace firewall rule')) {
            Remove-NetFirewallRule -Name $FirewallRuleName
        }
    }
    if ($PSCmdlet.ShouldProcess($FirewallRuleName, "allow inbound TCP $Port from $subnet only")) {
        New-NetFirewallRule -Name $FirewallRuleName -DisplayName "npu-proxy: TCP $Port from WSL2" `
            -Description 'Lets WSL2 reach npu-proxy; written by scripts/install_windows.ps1' `
            -Direction Inbound -Action Allow -Protocol TCP -LocalPort $Port `
            -RemoteAddress $subnet -Profile Any | Out-Null
        Write-Step "firewall: TCP $Port allowed from $subnet (WSL2) only"
    }
}

# Windows shows a rule's 172.28.160.0/20 as 172.28.160.0/255.255.240.0.
function Test-SameNetwork([string]$Shown, [string]$Cidr) {
    $parts = $Cidr.Split('/')
    if ($Shown -eq $Cidr) { return $true }
    $length = [int]$parts[1]
    $mask = [uint32]0
    if ($length -gt 0) { $mask = [uint32]([math]::Pow(2, 32) - [math]::Pow(2, 32 - $length)) }
    $maskBytes = [BitConverter]::GetBytes($mask)
    [Array]::Reverse($maskBytes)
    return $Shown -eq ('{0}/{1}' -f $parts[0], (New-Object Net.IPAddress(, $maskBytes)).ToString())
}

function Remove-FirewallRule {
    if ((Get-NetFirewallRule -Name $FirewallRuleName -ErrorAction SilentlyContinue) -and
        $PSCmdlet.ShouldProcess($FirewallRuleName, 'remove firewall rule')) {
        Remove-NetFirewallRule -Name $FirewallRuleName
        Write-Step "removed firewall rule '$FirewallRuleName'"
    }
}

# --- install and uninstall -------------------------------------------------------------

function Install-NpuProxy {
    foreach ($dir in @($InstallDir, $ModelsDir, $LogsDir)) { New-Directory $dir }
    Stop-Server
    Install-PythonEnvironment
    Write-EnvFile | Out-Null
    Set-FileContent -Path $Launcher -Content $LauncherContent | Out-Null
    Grant-DataAccess
    if ($UseNssm) {
        if (Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue) {
            if ($PSCmdlet.ShouldProcess($TaskName, 'remove the scheduled task (NSSM replaces it)')) {
                Unregister-ScheduledTask -TaskName $TaskName -Confirm:$false
            }
        }
        Register-ServerService
    } else {
        Register-ServerTask
    }
    if (-not $NoFirewall) { Set-FirewallRule }
    Start-Server
    Write-Step ("diagnose with: & '$(Join-Path $VenvDir 'Scripts\npu-proxy.exe')' doctor " +
        "--env-file '$EnvFile'")
}

function Uninstall-NpuProxy {
    Stop-Server
    if ((Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue) -and
        $PSCmdlet.ShouldProcess($TaskName, 'remove scheduled task')) {
        Unregister-ScheduledTask -TaskName $TaskName -Confirm:$false
        Write-Step "removed scheduled task '$TaskName'"
    }
    if (Get-Service -Name $ServiceName -ErrorAction SilentlyContinue) {
        $nssm = Get-Command nssm.exe -ErrorAction SilentlyContinue
        if ($PSCmdlet.ShouldProcess($ServiceName, 'remove service')) {
            if ($nssm) { Invoke-Native $nssm.Source @('remove', $ServiceName, 'confirm') }
            else { Invoke-Native sc.exe @('delete', $ServiceName) }
            Write-Step "removed service '$ServiceName'"
        }
    }
    Remove-FirewallRule
    $remove = @($VenvDir, $ToolsDir, $PythonDir, $Launcher)
    if ($Purge) { $remove = @($InstallDir) }
    foreach ($path in $remove) {
        if ((Test-Path -LiteralPath $path) -and $PSCmdlet.ShouldProcess($path, 'remove')) {
            Remove-Item -LiteralPath $path -Recurse -Force
            Write-Step "removed $path"
        }
    }
    if (-not $Purge) { Write-Step "kept $ModelsDir and $EnvFile (remove them too with -Uninstall -Purge)" }
}

if ($Purge -and -not $Uninstall) { throw '-Purge only makes sense with -Uninstall' }
if (-not $WhatIfPreference -and -not (Test-Administrator)) {
    throw 'run this script in an elevated PowerShell (Run as administrator), or with -WhatIf'
}
if ($Uninstall) {
    Uninstall-NpuProxy
} elseif ($FirewallOnly) {
    Set-FirewallRule
} else {
    Install-NpuProxy
}
