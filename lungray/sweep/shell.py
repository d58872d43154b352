"""What a cluster config's shell commands do, read the way the shell reads them (issue 23, point 3).

``check-cluster`` used to match spellings (``chmod 777``, ``0.0.0.0``), so ``mkdir -m 777``,
``install -d -m 0777``, ``umask 000``, ``--dashboard-host=::`` or ``mlflow --host ::`` passed.
Here a command line is split into simple commands as bash would (quotes, ``;``/``&&``/``||``/
``|``/``&``, subshells, redirections, ``bash -c '...'``, ``find -exec``), wrappers that run
another command are peeled off (``sudo``, ``env``, ``nohup``, ``nice``, ``timeout``, ``xargs``...),
shell variables and ``$(echo ...)``/``$(cat FILE)`` with a known value are substituted, and
then what each command does is evaluated:

* :func:`mode_change`: the permission a ``chmod``/``mkdir -m``/``install -m``/``setfacl`` gives
  others, numeric or symbolic, under the ``umask`` in force (:func:`umask_value`);
* :func:`listen_address`: the address a server binds (``ray start --dashboard-host``,
  ``mlflow server|ui --host/-h``, gunicorn/uvicorn ``--bind`` options), classified by
  :func:`address_kind` (``inet_aton`` spellings such as ``0`` included);
* :func:`cidr_coverage`: how much of the internet a set of CIDR ranges admits, so
  ``0.0.0.0/1`` + ``128.0.0.0/1`` is the whole IPv4 internet, as ``0.0.0.0/0`` is.

Pure functions of the text; nothing is executed.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import socket
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

_OPERATORS = {";", "&&", "||", "|", "&", "(", ")", "{", "}", ";;", "|&", "!"}
_REDIRECTS = {">", ">>", "<", ">&", "&>", "<&", ">|", "<<", "<<<", "&>>", "<>"}
_WRAPPERS = {
    # wrapper -> options that take a value
    "sudo": {"-u", "-g", "-h", "-p", "-C", "-D", "-r", "-t", "-U", "--user", "--group", "--host", "--prompt"},
    "env": {"-u", "--unset", "-C", "--chdir", "-S", "--split-string"},
    "nohup": set(),
    "time": set(),
    "nice": {"-n", "--adjustment"},
    "ionice": {"-c", "-n", "-p"},
    "exec": {"-a"},
    "command": set(),
    "builtin": set(),
    "stdbuf": {"-i", "-o", "-e"},
    "timeout": {"-s", "--signal", "-k", "--kill-after"},
    "xargs": {"-I", "-n", "-P", "-d", "-a", "-L", "-s", "-E"},
    "setsid": set(),
    "chronic": set(),
}
_SHELLS = {"sh", "bash", "dash", "zsh", "ksh"}
_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_SUBST = re.compile(r"__LRSUBST(\d+)__")


@dataclass(frozen=True)
class Command:
    """One simple command: its words (wrappers and assignments peeled off) and where it came from."""

    argv: tuple[str, ...]
    text: str
    env: Mapping[str, str] = field(default_factory=dict)
    writes: tuple[tuple[str, str], ...] = ()  # (redirection target, the command's literal output or "")

    @property
    def name(self) -> str:
        return self.argv[0].rsplit("/", 1)[-1] if self.argv else ""


class Shell:
    """Shell state over a sequence of command lines (variables and small files they write), so
    ``H=::; mlflow server --host $H`` and ``echo :: > ~/h`` then ``--host $(cat ~/h)`` are read
    as what they bind."""

    def __init__(self) -> None:
        self.vars: dict[str, str] = {}
        self.files: dict[str, str] = {}

    def commands(self, line: str) -> list[Command]:
        """The simple commands of ``line`` in order (command substitutions' own commands first)."""
        out: list[Command] = []
        text, substs = _cut_substitutions(line)
        inner_out: dict[int, Optional[str]] = {}
        for words in _split(text):
            for k in sorted({int(m) for w in words for m in _SUBST.findall(w)} - set(inner_out)):
                cmds = self.commands(substs[k])  # run when its command runs, after what came before
                out += cmds
                inner_out[k] = self._output_of(cmds)
            cmd = self._command(words, inner_out, line)
            if cmd is None:
                continue
            if cmd.name in _SHELLS and "-c" in cmd.argv[1:]:
                i = cmd.argv.index("-c")
                if i + 1 < len(cmd.argv):
                    out += self.commands(cmd.argv[i + 1])
                    continue
            if cmd.name == "su" and "-c" in cmd.argv[1:]:
                i = cmd.argv.index("-c")
                if i + 1 < len(cmd.argv):
                    out += self.commands(cmd.argv[i + 1])
                    continue
            if cmd.name == "find" and any(a in ("-exec", "-execdir", "-ok") for a in cmd.argv):
                out.append(cmd)
                args = list(cmd.argv)
                while any(a in ("-exec", "-execdir", "-ok") for a in args):
                    j = next(k for k, a in enumerate(args) if a in ("-exec", "-execdir", "-ok"))
                    end = next((k for k in range(j + 1, len(args)) if args[k] in (";", "+", "\\;")), len(args))
                    sub = args[j + 1:end]
                    if sub:
                        peeled = _peel(sub)
                        if peeled:
                            out.append(Command(tuple(peeled), line))
                    args = args[end + 1:]
                continue
            for target, content in cmd.writes:
                self.files[_norm_path(target)] = content
            out.append(cmd)
        return out

    def _command(self, words: list[str], inner_out: Mapping[int, Optional[str]], line: str) -> Optional[Command]:
        writes: list[tuple[str, str]] = []
        argv: list[str] = []
        i = 0
        while i < len(words):
            w = words[i]
            if w in _REDIRECTS:
                if argv and argv[-1].isdigit():
                    argv.pop()  # the fd of "2>" / "2>&1"
                if i + 1 < len(words) and w in (">", ">>", ">|", "&>", "&>>"):
                    writes.append((self._expand(words[i + 1], inner_out), ""))
                i += 2
                continue
            argv.append(w)
            i += 1
        env: dict[str, str] = {}
        while argv and _ASSIGN.match(argv[0]):
            k, v = argv.pop(0).split("=", 1)
            env[k] = self._expand(v, inner_out)
        if argv and argv[0] == "export":
            for a in argv[1:]:
                if _ASSIGN.match(a):
                    k, v = a.split("=", 1)
                    self.vars[k] = self._expand(v, inner_out)
            return None
        if not argv:
            self.vars.update(env)  # "H=::" alone sets a shell variable
            return None
        argv = [self._expand(a, inner_out) for a in argv]
        peeled = _peel(argv, env)
        if not peeled:
            return None
        if writes and peeled[0] in ("echo", "printf"):
            out = _literal_output(peeled)
            writes = [(t, out or "") for t, _ in writes]
        return Command(tuple(peeled), line, env, tuple(writes))

    def _expand(self, word: str, inner_out: Mapping[int, Optional[str]]) -> str:
        def var(m: re.Match) -> str:
            name = m.group(1) or m.group(3)
            if name in self.vars:
                return self.vars[name]
            if m.group(2) is not None:
                return m.group(2)
            return m.group(0)

        def sub(m: re.Match) -> str:
            v = inner_out.get(int(m.group(1)))
            return v.strip() if v is not None else "$(...)"

        return _SUBST.sub(sub, _VAR.sub(var, word))

    def _output_of(self, cmds: Sequence[Command]) -> Optional[str]:
        """What a command substitution prints, when lungray can know it (echo/printf/cat of a
        file an earlier command wrote literally); ``None`` otherwise."""
        if len(cmds) != 1:
            return None
        c = cmds[0]
        if c.name in ("echo", "printf"):
            return _literal_output(list(c.argv))
        if c.name == "cat" and len(c.argv) == 2:
            content = self.files.get(_norm_path(c.argv[1]))
            return content or None
        return None


def _norm_path(p: str) -> str:
    return re.sub(r"^(\$HOME|\$\{HOME\})/", "~/", p.strip())


def _literal_output(argv: Sequence[str]) -> Optional[str]:
    args = [a for a in argv[1:] if not (argv[0] == "echo" and a in ("-n", "-e", "-E"))]
    if any("$(...)" in a or "$" in a for a in args):
        return None
    if argv[0] == "printf":
        return args[0].replace("\\n", "\n") if args else ""
    return " ".join(args)


def _peel(argv: list[str], env: Optional[dict[str, str]] = None) -> list[str]:
    """``sudo -u x env A=b nohup nice -n 5 cmd ...`` -> ``cmd ...`` (assignments into ``env``)."""
    env = {} if env is None else env
    argv = list(argv)
    while argv:
        name = argv[0].rsplit("/", 1)[-1]
        if _ASSIGN.match(argv[0]):
            k, v = argv.pop(0).split("=", 1)
            env[k] = v
            continue
        if name not in _WRAPPERS:
            break
        takes = _WRAPPERS[name]
        argv.pop(0)
        if name == "timeout" and argv:  # its duration
            while argv and argv[0].startswith("-"):
                opt = argv.pop(0)
                if opt in takes and argv:
                    argv.pop(0)
            if argv:
                argv.pop(0)
            continue
        while argv and argv[0].startswith("-") and argv[0] != "-":
            opt = argv.pop(0)
            if opt == "--":
                break
            if opt in takes and argv:
                argv.pop(0)
            elif name == "nice" and re.fullmatch(r"-\d+", opt):
                pass
    return argv


def _cut_substitutions(line: str) -> tuple[str, list[str]]:
    """``line`` with each ``$(...)``/backtick substitution replaced by a placeholder word part,
    and the substitutions' texts (quotes respected: ``'$(x)'`` stays literal)."""
    out, substs = [], []
    i, quote = 0, ""
    while i < len(line):
        c = line[i]
        if quote == "'":
            if c == "'":
                quote = ""
            out.append(c)
            i += 1
            continue
        if c == "\\" and i + 1 < len(line):
            out.append(line[i:i + 2])
            i += 2
            continue
        if c in "'\"" and (not quote or quote == c):
            quote = "" if quote else c
            out.append(c)
            i += 1
            continue
        if line.startswith("$(", i) and not line.startswith("$((", i):
            depth, j = 1, i + 2
            while j < len(line) and depth:
                depth += {"(": 1, ")": -1}.get(line[j], 0)
                j += 1
            substs.append(line[i + 2:j - 1])
            out.append(f"__LRSUBST{len(substs) - 1}__")
            i = j
            continue
        if c == "`":
            j = line.find("`", i + 1)
            j = len(line) if j < 0 else j
            substs.append(line[i + 1:j])
            out.append(f"__LRSUBST{len(substs) - 1}__")
            i = j + 1
            continue
        out.append(c)
        i += 1
    return "".join(out), substs


def _split(text: str) -> list[list[str]]:
    """Words of each simple command (quotes removed; operators and newlines separate)."""
    text = re.sub(r"\\\n", "", text)
    chars, quote = [], ""
    for c in text:  # a newline outside quotes ends a command
        if c in "'\"":
            quote = "" if quote == c else (quote or c)
        chars.append(";" if c == "\n" and not quote else c)
    lex = shlex.shlex("".join(chars), posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = ""
    try:
        tokens = list(lex)
    except ValueError:  # unbalanced quotes: read it word by word, as far as it goes
        tokens = "".join(chars).split()
    cmds, cur = [], []
    for t in tokens:
        if t in _OPERATORS or (t and set(t) <= set(";&|()") and t not in _REDIRECTS):
            if cur:
                cmds.append(cur)
            cur = []
        else:
            cur.append(t)
    if cur:
        cmds.append(cur)
    return cmds


def commands(lines: Iterable[str]) -> list[Command]:
    """Every simple command of ``lines`` (one shell state across them, as one login's commands)."""
    sh = Shell()
    return [c for line in lines for c in sh.commands(line)]


# --------------------------------------------------------------------------------------------
# permissions
# --------------------------------------------------------------------------------------------

_WHO = {"u": 0o4700, "g": 0o2070, "o": 0o1007}
_PERM_BITS = {"r": 0o444, "w": 0o222, "x": 0o111, "X": 0o111, "s": 0o6000, "t": 0o1000}


def apply_mode(spec: str, start: int, umask: int = 0o022) -> Optional[int]:
    """The mode after ``chmod spec`` on a file of mode ``start`` (``None``: not a mode).

    Numeric (``777``, ``0750``) or symbolic (``a+rwx``, ``u=rwx,go=rx``, ``+w``, ``o=u``);
    a clause without "who" applies to all bits the umask lets through, as chmod does.
    """
    if re.fullmatch(r"[0-7]{1,4}", spec):
        return int(spec, 8)
    mode = start
    for clause in spec.split(","):
        m = re.fullmatch(r"([ugoa]*)((?:[-+=](?:[rwxXst]*|[ugo]))+)", clause)
        if not m:
            return None
        who = m.group(1) or ""
        mask = 0o7777 if (not who or "a" in who) else 0
        for w in who.replace("a", ""):
            mask |= _WHO[w]
        limit = (0o7777 & ~umask) if not who else 0o7777
        for op, perms in re.findall(r"([-+=])([rwxXstugo]*)", m.group(2)):
            if perms in ("u", "g", "o"):
                shift = {"u": 6, "g": 3, "o": 0}[perms]
                b = (mode >> shift) & 0o7
                bits = (b << 6) | (b << 3) | b
            else:
                bits = 0
                for p in perms:
                    bits |= _PERM_BITS[p]
            bits &= mask & limit
            if op == "+":
                mode |= bits
            elif op == "-":
                mode &= ~bits
            else:
                mode = (mode & ~(mask & 0o777)) | bits
    return mode & 0o7777


def umask_value(cmd: Command) -> Optional[int]:
    """The umask a ``umask`` command sets (``None`` for a query or something unreadable)."""
    args = [a for a in cmd.argv[1:] if a != "-S" and a != "-p"]
    if not args:
        return None
    spec = args[0]
    if re.fullmatch(r"[0-7]{1,4}", spec):
        return int(spec, 8) & 0o777
    allowed = apply_mode(spec, 0o777 & ~0o022, umask=0)  # symbolic umask names the allowed bits
    return None if allowed is None else (~allowed) & 0o777


def mode_change(cmd: Command, umask: int = 0o022) -> Optional[tuple[int, str]]:
    """``(mode, spelling)`` that ``cmd`` gives what it creates or changes, for chmod, mkdir -m,
    install -m and setfacl (``None`` when it sets no mode); a mode lungray cannot read is
    returned as ``0o7777`` so that it is refused rather than guessed."""
    name, args = cmd.name, list(cmd.argv[1:])
    if name == "chmod":
        rest = [a for a in args if not re.fullmatch(r"-[RfvchHLP]+|--[a-z][\w-]*(=.*)?", a)]
        if not rest:
            return None
        spec = rest[0]
        got = apply_mode(spec, 0o755, umask)
        return (0o7777 if got is None else got), spec
    if name in ("mkdir", "install"):
        spec = None
        for i, a in enumerate(args):
            if a in ("-m", "--mode") and i + 1 < len(args):
                spec = args[i + 1]
            elif a.startswith("--mode="):
                spec = a.split("=", 1)[1]
            elif re.fullmatch(r"-[a-zA-Z]*m", a) and i + 1 < len(args):
                spec = args[i + 1]  # "-pm 777"
            elif re.fullmatch(r"-[a-zA-Z]*m.+", a):
                spec = a[a.index("m") + 1:]  # "-m777", "-dm0777"
        if spec is None:
            return None
        # GNU mkdir applies a symbolic -m to a=rwx (who-less clauses through the umask), install to 0
        got = apply_mode(spec, 0o777, umask) if name == "mkdir" else apply_mode(spec, 0, 0)
        return (0o7777 if got is None else got), spec
    if name == "setfacl":
        for i, a in enumerate(args):
            spec = args[i + 1] if a in ("-m", "--modify", "-M") and i + 1 < len(args) else (a.split("=", 1)[1] if a.startswith("--modify=") else None)
            if spec is None:
                continue
            for entry in spec.split(","):
                parts = entry.split(":")
                if parts and parts[0] in ("d", "default"):
                    parts = parts[1:]
                if len(parts) >= 3 and parts[0] in ("o", "other", "m", "mask") and "w" in parts[-1]:
                    return 0o0002, spec
        return None
    return None


def others_can_write(mode: int) -> bool:
    return bool(mode & 0o002)


# --------------------------------------------------------------------------------------------
# addresses
# --------------------------------------------------------------------------------------------


def address_kind(host: str) -> str:
    """``"all"`` (every interface: ``0.0.0.0``, ``::``, ``0``, ``*``, empty), ``"loopback"``,
    ``"private"``, ``"public"``, ``"unknown"`` (a substitution or a name)."""
    h = host.strip().strip("[]")
    if h in ("", "*"):
        return "all"
    if "$(...)" in h or "$" in h:
        return "unknown"
    if h.lower() in ("localhost", "ip6-localhost"):
        return "loopback"
    try:
        ip = ipaddress.ip_address(h.split("%")[0])
    except ValueError:
        try:  # inet_aton's spellings: "0", "0x0", "127.1", "0.0"
            if re.fullmatch(r"[0-9a-fA-FxX.]+", h):
                ip = ipaddress.ip_address(socket.inet_aton(h))
            else:
                return "unknown"
        except OSError:
            return "unknown"
    if ip.is_unspecified:
        return "all"
    if ip.is_loopback:
        return "loopback"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return address_kind(str(ip.ipv4_mapped))
    return "private" if (ip.is_private or ip.is_link_local) else "public"


def _opt(args: Sequence[str], names: Sequence[str]) -> list[str]:
    """Values of an option spelled ``--x v``, ``--x=v`` or ``-hv`` (short options)."""
    out = []
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                out.append(args[i + 1])
            elif n.startswith("--") and a.startswith(n + "="):
                out.append(a[len(n) + 1:])
            elif not n.startswith("--") and a.startswith(n) and len(a) > len(n) and not a.startswith("--"):
                out.append(a[len(n):])
    return out


def _bind_host(spec: str) -> str:
    """``0.0.0.0:5000`` / ``[::]:5000`` / ``unix:/x`` -> the host part."""
    if spec.startswith("unix:"):
        return "localhost"
    if spec.startswith("["):
        return spec[1:spec.find("]")] if "]" in spec else spec
    return spec.rsplit(":", 1)[0] if spec.count(":") == 1 else spec


def is_mlflow_server(cmd: Command) -> bool:
    a = cmd.argv
    if cmd.name == "mlflow":
        return len(a) > 1 and a[1] in ("server", "ui")
    return cmd.name.startswith("python") and len(a) > 3 and a[1] == "-m" and a[2] == "mlflow" and a[3] in ("server", "ui")


def mlflow_args(cmd: Command) -> list[str]:
    a = list(cmd.argv)
    return a[2:] if cmd.name == "mlflow" else a[4:]


def listen_address(cmd: Command) -> Optional[tuple[str, str]]:
    """``(what, host)`` a server command binds, for Ray's dashboard and MLflow's server/UI."""
    if cmd.name == "ray" and len(cmd.argv) > 1 and cmd.argv[1] == "start":
        hosts = _opt(cmd.argv[2:], ["--dashboard-host"])
        return ("ray dashboard (--dashboard-host)", hosts[-1]) if hosts else None
    if is_mlflow_server(cmd):
        args = mlflow_args(cmd)
        hosts = _opt(args, ["--host", "-h"])
        for opts in _opt(args, ["--gunicorn-opts", "--uvicorn-opts", "--waitress-opts"]):
            inner = shlex.split(opts)
            hosts += [_bind_host(b) for b in _opt(inner, ["--bind", "-b", "--host"])]
        if "MLFLOW_HOST" in cmd.env:
            hosts.append(cmd.env["MLFLOW_HOST"])
        return ("mlflow server (--host)", hosts[-1]) if hosts else ("mlflow server (--host)", "127.0.0.1")
    return None


# --------------------------------------------------------------------------------------------
# CIDR ranges
# --------------------------------------------------------------------------------------------

#: SSH from more addresses than this is "the internet", however the ranges are cut: a /8 for
#: IPv4 (16.7 M addresses; a campus is a /16), a /32 for IPv6 (one provider's allocation)
MAX_V4 = 2 ** 24
MAX_V6 = 2 ** 96


def cidr_coverage(cidrs: Iterable[str]) -> tuple[int, int, list[str]]:
    """``(IPv4 addresses, IPv6 addresses, unreadable)`` admitted by the union of ``cidrs``."""
    v4, v6, bad = [], [], []
    for c in cidrs:
        try:
            net = ipaddress.ip_network(str(c).strip(), strict=False)
        except ValueError:
            bad.append(str(c))
            continue
        (v4 if net.version == 4 else v6).append(net)
    n4 = sum(n.num_addresses for n in ipaddress.collapse_addresses(v4)) if v4 else 0
    n6 = sum(n.num_addresses for n in ipaddress.collapse_addresses(v6)) if v6 else 0
    return n4, n6, bad


def too_wide(cidrs: Sequence[str]) -> Optional[str]:
    """A one-line reason when ``cidrs`` together admit more than :data:`MAX_V4`/:data:`MAX_V6`
    addresses or cannot be read; ``None`` when they are narrow enough."""
    n4, n6, bad = cidr_coverage(cidrs)
    if bad:
        return f"cannot read the CIDR range(s) {', '.join(bad)}"
    if n4 > MAX_V4:
        share = n4 / 2 ** 32
        return (f"{', '.join(cidrs)} together admit {n4:,} IPv4 addresses ({share:.0%} of the internet; at most a /8, "
                f"{MAX_V4:,}, is accepted)")
    if n6 > MAX_V6:
        return f"{', '.join(cidrs)} together admit more IPv6 addresses than a /32"
    return None


def ingress_cidrs(cmd: Command) -> list[str]:
    """CIDRs an ``aws ec2 authorize-security-group-ingress`` command opens (``--cidr`` or
    ``--ip-permissions ... CidrIp=``/JSON)."""
    a = cmd.argv
    if cmd.name != "aws" or "authorize-security-group-ingress" not in a:
        return []
    out = _opt(a, ["--cidr"])
    for perm in _opt(a, ["--ip-permissions"]):
        out += re.findall(r"CidrIpv?6?[\"']?\s*[=:]\s*[\"']?([0-9a-fA-F.:]+/\d+)", perm)
    return out
