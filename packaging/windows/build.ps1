# Build hemascan's Windows installer from a clean checkout (what .github/workflows/windows-installer.yml runs):
#
#     powershell -ExecutionPolicy Bypass -File packaging\windows\build.ps1 [-Variant cpu|cuda]
#
# 1. torch from its named source, checked against packaging\torch-wheels.sha256
#    (packaging\torch_wheel.py: cpu = PyTorch's CPU wheel index, cuda = PyPI; or
#    $env:HEMASCAN_TORCH_INDEX = a mirror, $env:HEMASCAN_TORCH_WHEELS = a folder of wheels);
# 2. a build venv in build\venv-VARIANT with hemascan (editable) and PyInstaller;
# 3. the PyInstaller bundle (packaging\hemascan.spec) in build\dist-VARIANT\hemascan;
# 4. the frozen app's --self-test, which must pass;
# 5. Inno Setup (ISCC.exe on the PATH or in its default folder) with the version the bundle
#    reports: dist\hemascan-VARIANT-VERSION-setup.exe.
# Needs Python 3.11 (py -3.11) and Inno Setup 6.3+. Nothing here has been run on Windows by the
# developers (docs/packaging.md says what was and was not checked).
param([ValidateSet("cpu", "cuda")][string]$Variant = "cpu")
$ErrorActionPreference = "Stop"
$Root = (Resolve-Path "$PSScriptRoot\..\..").Path
Set-Location $Root
$Venv = Join-Path $Root "build\venv-$Variant"
$Wheels = Join-Path $Root "build\wheels-$Variant"
$Dist = Join-Path $Root "build\dist-$Variant"
$Work = Join-Path $Root "build\pyinstaller-$Variant"
$Constraints = if ($Variant -eq "cpu") { "packaging\constraints-cpu.txt" } else { "constraints.txt" }

function Step($what) { Write-Host "`n== $what" }
function Check($what) { if ($LASTEXITCODE -ne 0) { Write-Error "build.ps1: $what failed (exit $LASTEXITCODE)"; exit 1 } }

Step "torch wheel ($Variant)"
py -3.11 packaging\torch_wheel.py $Variant $Wheels; Check "fetching the torch wheel"

Step "build venv $Venv"
if (-not (Test-Path "$Venv\Scripts\python.exe")) { py -3.11 -m venv $Venv; Check "creating the venv" }
$Py = "$Venv\Scripts\python.exe"
$TorchPin = (Select-String -Path $Constraints -Pattern '^torch==(\S+)\s*$').Matches[0].Groups[1].Value
& $Py -m pip install --disable-pip-version-check -q --no-deps --no-index --find-links $Wheels "torch==$TorchPin"; Check "installing torch"
& $Py -m pip install --disable-pip-version-check -q -c $Constraints -e $Root "pyinstaller>=6.10"; Check "installing hemascan"

Step "PyInstaller ($Variant)"
if (Test-Path $Dist) { Remove-Item -Recurse -Force $Dist }
$env:HEMASCAN_VARIANT = $Variant
& "$Venv\Scripts\pyinstaller.exe" --noconfirm --log-level WARN --distpath $Dist --workpath $Work packaging\hemascan.spec; Check "PyInstaller"
$Cli = Join-Path $Dist "hemascan\hemascan-cli.exe"

Step "frozen self-test"
$env:QT_QPA_PLATFORM = "offscreen"
& $Cli --self-test; Check "the self-test"
Remove-Item Env:\QT_QPA_PLATFORM

Step "Inno Setup"
$Version = ((& $Cli --version) -replace '^hemascan ', '').Trim(); Check "hemascan-cli --version"
$Iscc = (Get-Command ISCC.exe -ErrorAction SilentlyContinue).Source
if (-not $Iscc) { $Iscc = "${env:ProgramFiles(x86)}\Inno Setup 6\ISCC.exe" }
if (-not (Test-Path $Iscc)) { Write-Error "build.ps1: Inno Setup 6 (ISCC.exe) is not installed: choco install innosetup"; exit 1 }
& $Iscc "/DVariant=$Variant" "/DAppVersion=$Version" packaging\windows\hemascan.iss; Check "Inno Setup"
Get-ChildItem "dist\hemascan-$Variant-$Version-setup*"
