; Inno Setup script for hemascan on Windows: a per-machine install to Program Files (what a
; lab's IT deploys; the setup asks for administrator rights) or, chosen in the setup's first
; dialog or with /CURRENTUSER, a per-user install that needs none; a Start menu entry and an
; uninstaller. User data stays per user (%LOCALAPPDATA%\hemascan) unless
; %ProgramData%\hemascan\hemascan.toml names a shared data directory (README: one workstation,
; several users). Needs Inno Setup 6.3 or later (x64compatible). Built by build.ps1.
;
; Build (on Windows, after the PyInstaller bundle):
;   set HEMASCAN_VARIANT=cpu
;   build\venv-cpu\Scripts\pyinstaller --noconfirm --distpath build\dist-cpu --workpath build\pyinstaller-cpu packaging\hemascan.spec
;   build\dist-cpu\hemascan\hemascan-cli.exe --self-test
;   "C:\Program Files (x86)\Inno Setup 6\ISCC.exe" /DVariant=cpu /DAppVersion=X.Y.Z packaging\windows\hemascan.iss
; Output: dist\hemascan-cpu-X.Y.Z-setup.exe. /DVariant=cuda builds from build\dist-cuda.
; The bundle holds two programs: hemascan.exe (the desktop app, no console window) and
; hemascan-cli.exe (the command line, e.g. "hemascan-cli classify D:\smears").

#ifndef Variant
  #define Variant "cpu"
#endif
#define AppName "hemascan"
#ifndef AppVersion
  ; the version the bundle reports (hemascan-cli.exe --version): packaging\windows\build.ps1 passes it
  #error AppVersion is not given: build with packaging\windows\build.ps1, or pass /DAppVersion=X.Y.Z from "hemascan-cli.exe --version"
#endif
#define AppPublisher "hemascan maintainers"
#define BundleDir "..\..\build\dist-" + Variant + "\hemascan"

[Setup]
; A fixed AppId: upgrades replace the previous install instead of adding a second one.
; The CPU and CUDA builds share it, so installing one replaces the other.
AppId={{6B1C2F4E-8D3A-4C57-9E0B-2A7F5D1C9E31}
AppName={#AppName}
AppVersion={#AppVersion}
AppVerName={#AppName} {#AppVersion} ({#Variant})
AppPublisher={#AppPublisher}
AppComments=Blood-smear image classification and review. Decision support only: not a diagnostic device.
; Per machine by default ({autopf} = Program Files); the dialog or /CURRENTUSER installs for one
; user without administrator rights ({autopf} = %LOCALAPPDATA%\Programs).
PrivilegesRequired=admin
PrivilegesRequiredOverridesAllowed=dialog commandline
DefaultDirName={autopf}\{#AppName}
DefaultGroupName={#AppName}
DisableProgramGroupPage=yes
UsePreviousAppDir=yes
OutputDir=..\..\dist
OutputBaseFilename={#AppName}-{#Variant}-{#AppVersion}-setup
SetupIconFile=..\..\resources\icons\hemascan.ico
UninstallDisplayIcon={app}\hemascan.exe
UninstallDisplayName={#AppName} {#AppVersion} ({#Variant})
; torch makes the bundle large: LZMA2 with a solid archive keeps the installer small.
Compression=lzma2/max
SolidCompression=yes
LZMAUseSeparateProcess=yes
; The CUDA build's bundle is over 2 GB, more than one setup file can hold: the setup is split
; into setup.exe and .bin slices next to it (keep them together when deploying).
DiskSpanning=yes
DiskSliceSize=max
; PyTorch wheels are 64-bit only.
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
MinVersion=10.0
WizardStyle=modern
; Close a running hemascan before files are replaced or removed.
CloseApplications=yes
RestartApplications=no
ChangesAssociations=no
ChangesEnvironment=no

[Languages]
Name: "english"; MessagesFile: "compiler:Default.isl"

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked

[InstallDelete]
; An upgrade must not keep modules of the previous version next to the new ones.
Type: filesandordirs; Name: "{app}\_internal"

[Files]
Source: "{#BundleDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Dirs]
; Per machine: the folder of the system-wide configuration (hemascan.toml), which only
; administrators may change.
Name: "{commonappdata}\{#AppName}"; Check: IsAdminInstallMode; Flags: uninsneveruninstall

[Icons]
Name: "{autoprograms}\{#AppName}"; Filename: "{app}\hemascan.exe"; WorkingDir: "{userdocs}"; Comment: "Classify and review blood-smear images"
; cmd /k keeps the console open so the result can be read: cmd /k ""...\hemascan-cli.exe" --self-test"
Name: "{autoprograms}\{#AppName} self-test"; Filename: "{cmd}"; Parameters: "/k """"{app}\hemascan-cli.exe"" --self-test"""; IconFilename: "{app}\hemascan-cli.exe"; WorkingDir: "{userdocs}"; Comment: "Check that the installation works"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\hemascan.exe"; WorkingDir: "{userdocs}"; Tasks: desktopicon

[Run]
Filename: "{app}\hemascan.exe"; Description: "{cm:LaunchProgram,{#AppName}}"; Flags: nowait postinstall skipifsilent

[UninstallDelete]
; Files the app may write next to itself (normally none). User data lives in
; %LOCALAPPDATA%\hemascan and is deliberately kept (see docs/packaging.md).
Type: filesandordirs; Name: "{app}\_internal"
Type: dirifempty; Name: "{app}"
