"""Connecting to ZooKeeper with kazoo (threading handler).

kazoo does the real work: it reconnects to another ensemble member when one
dies, retries operations (``client.retry``) and keeps the session alive.
Here we only give it our settings and turn "cannot connect" into a clear
error or a patient wait with one log line per attempt.

``Settings`` is everything but the ensemble and the session timeout: the
credential (``USER:PASSWORD``, given directly or, better, in a file; sent
with the digest scheme, or with SASL DIGEST-MD5), the ACL of the nodes we
create, and TLS.  Servers build it from their
``<zookeeper>`` section, clients from ``zookeeper_*`` keyword arguments
(``settings_from_kwargs``), the CLI from its options and environment.
"""
import atexit
import functools
import logging
import os
import stat
import threading
from dataclasses import dataclass, field, replace

from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry
from kazoo.security import ACL, Id, Permissions, make_digest_acl

from . import zklogs

logger = logging.getLogger(__name__)

EXIT_TIMEOUT = 2.0

# The ACL of the nodes a server creates (the path, its missing parents, the
# servers' nodes).  Only the credential may change them in either case.
ACL_OFF = "off"                 # ZooKeeper's default: anyone may do anything
ACL_WORLD_READ = "world-read"   # anyone may read (find the servers)
ACL_PRIVATE = "private"         # only the credential may even read
ACL_MODES = (ACL_OFF, ACL_WORLD_READ, ACL_PRIVATE)
# SASL through kazoo's sasl_options (the pure-sasl package); DIGEST-MD5
# carries the same USER:PASSWORD, checked by ZooKeeper's JAAS login module.
SASL_MECHANISMS = ("DIGEST-MD5",)
_ACL_ALIASES = {"false": ACL_OFF, "no": ACL_OFF, "off": ACL_OFF,
                "true": ACL_WORLD_READ, "yes": ACL_WORLD_READ,
                "on": ACL_WORLD_READ}


class ZooKeeperUnreachable(Exception):
    """No ZooKeeper server of the ensemble answered in time."""


class CredentialsError(ValueError):
    """A credential or credentials file that cannot be used."""


def acl_mode(value):
    """An ACL mode from a config value: off, world-read or private
    (true/false, on/off and yes/no also work: true means world-read)."""
    mode = _ACL_ALIASES.get(str(value).strip().lower(),
                            str(value).strip().lower())
    if mode not in ACL_MODES:
        raise ValueError(f"acl {value!r}: expected one of "
                         f"{', '.join(ACL_MODES)} (true means world-read)")
    return mode


def check_credential(value, where="the credential"):
    """``USER:PASSWORD`` with a non-empty user and password."""
    user, colon, password = value.partition(":")
    if not colon or not user or not password:
        raise CredentialsError(f"{where} must be USER:PASSWORD (digest "
                               "authentication)")
    return value


def read_auth_file(path):
    """The ``USER:PASSWORD`` in ``path`` (its first non-empty, non-comment
    line).  A file others may read is used, with a warning."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
        mode = os.stat(path).st_mode
    except OSError as e:
        raise CredentialsError(f"cannot read the ZooKeeper credentials "
                               f"file {path}: {e.strerror}") from None
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise CredentialsError(f"the ZooKeeper credentials file {path} is "
                               "empty; write USER:PASSWORD in it")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("the ZooKeeper credentials file %s can be read by "
                       "other users; chmod 600 it", path)
    return check_credential(lines[0], f"the first line of {path}")


@dataclass(frozen=True)
class Settings:
    """How to authenticate to ZooKeeper and protect what we create there.

    ``auth`` is ``USER:PASSWORD`` (digest; kept out of ``repr``); ``acl``
    one of ``ACL_MODES``; the TLS fields are kazoo's (``ca`` a PEM file of
    the CA(s) that signed the ZooKeeper servers' certificates, ``certfile``
    and ``keyfile`` this process's own certificate for servers that
    require client certificates).  With ``sasl_mechanism`` the credential
    goes through SASL instead of the digest scheme, and the ACL names the
    SASL user.
    """
    auth: str = field(default=None, repr=False)
    acl: str = ACL_OFF
    use_ssl: bool = False
    ca: str = None
    certfile: str = None
    keyfile: str = None
    keyfile_password: str = field(default=None, repr=False)
    verify_certs: bool = True
    check_hostname: bool = True
    sasl_mechanism: str = None

    def __post_init__(self):
        object.__setattr__(self, "acl", acl_mode(self.acl))
        if self.auth is not None:
            check_credential(self.auth)
        if self.acl != ACL_OFF and not self.auth:
            raise CredentialsError(
                f"acl {self.acl} needs a credential (auth USER:PASSWORD or "
                "auth-file FILE): the nodes are made writable by it alone")
        tls = (self.ca, self.certfile, self.keyfile)
        if any(tls) and not self.use_ssl:
            raise ValueError("certificate files are given but TLS is off; "
                             "turn it on (use-ssl, zookeeper_use_ssl)")
        if self.keyfile and not self.certfile:
            raise ValueError("a TLS key without its certificate (certfile)")
        if self.sasl_mechanism is not None:
            mechanism = self.sasl_mechanism.upper()
            if mechanism not in SASL_MECHANISMS:
                raise ValueError(
                    f"SASL mechanism {self.sasl_mechanism!r}: only "
                    f"{', '.join(SASL_MECHANISMS)} is supported")
            if not self.auth:
                raise CredentialsError(
                    f"SASL {mechanism} needs a credential (USER:PASSWORD)")
            object.__setattr__(self, "sasl_mechanism", mechanism)
            try:
                import puresasl  # noqa: F401  (kazoo's SASL library)
            except ImportError:
                raise ValueError("SASL needs the pure-sasl package (pip "
                                 "install pure-sasl, or zkzeo[sasl])") \
                    from None

    @property
    def user(self):
        return self.auth.partition(":")[0] if self.auth else None

    def acl_list(self):
        """The kazoo ACL of the nodes we create, or None (open)."""
        if self.acl == ACL_OFF:
            return None
        user, _, password = self.auth.partition(":")
        if self.sasl_mechanism:
            # ZooKeeper knows a SASL client by its user name.
            acl = [ACL(Permissions.ALL, Id("sasl", user))]
        else:
            acl = [make_digest_acl(user, password, all=True)]
        if self.acl == ACL_WORLD_READ:
            acl.append(ACL(Permissions.READ, Id("world", "anyone")))
        return acl

    def kazoo_arguments(self):
        """The keyword arguments of ``KazooClient`` for these settings."""
        args = {}
        if self.sasl_mechanism:
            user, _, password = self.auth.partition(":")
            args["sasl_options"] = {"mechanism": self.sasl_mechanism,
                                    "username": user, "password": password}
        elif self.auth:
            args["auth_data"] = [("digest", self.auth)]
        if self.acl != ACL_OFF:
            args["default_acl"] = self.acl_list()
        if self.use_ssl:
            # Not checking the certificate means not checking its names.
            args.update(use_ssl=True, verify_certs=self.verify_certs,
                        check_hostname=self.check_hostname and
                        self.verify_certs)
            for name in ("ca", "certfile", "keyfile", "keyfile_password"):
                if getattr(self, name):
                    args[name] = getattr(self, name)
        return args


NO_SETTINGS = Settings()

# zookeeper_NAME keyword arguments of clients -> Settings fields
CLIENT_KEYWORDS = ("auth", "auth_file", "use_ssl", "ca", "certfile",
                   "keyfile", "keyfile_password", "verify_certs",
                   "check_hostname", "sasl_mechanism")


def settings(auth=None, auth_file=None, acl=ACL_OFF, **tls):
    """Settings from a credential or a credentials file (not both)."""
    if auth and auth_file:
        raise CredentialsError("give the ZooKeeper credential directly or "
                               "in a file, not both")
    if auth_file:
        auth = read_auth_file(auth_file)
    return Settings(auth=auth or None, acl=acl,
                    **{k: v for k, v in tls.items() if v is not None})


def settings_from_environment(environ=os.environ):
    """Credentials from ``$ZKZEO_AUTH_FILE`` (a file holding USER:PASSWORD)
    or ``$ZKZEO_AUTH`` (USER:PASSWORD), as keyword arguments of
    ``settings``; empty when neither is set."""
    if environ.get("ZKZEO_AUTH_FILE"):
        return {"auth_file": environ["ZKZEO_AUTH_FILE"]}
    if environ.get("ZKZEO_AUTH"):
        return {"auth": environ["ZKZEO_AUTH"]}
    return {}


def settings_from_kwargs(kw):
    """Pop a client's ZooKeeper security arguments from ``kw`` and return
    their Settings: ``zookeeper_settings`` (a Settings), or the
    ``zookeeper_NAME`` arguments of CLIENT_KEYWORDS.  Without a credential,
    the environment's (``settings_from_environment``) is used."""
    given = {name: kw.pop(f"zookeeper_{name}") for name in CLIENT_KEYWORDS
             if f"zookeeper_{name}" in kw}
    base = kw.pop("zookeeper_settings", None)
    if base is not None:
        if given:
            raise TypeError("give zookeeper_settings or zookeeper_* "
                            "arguments, not both")
        if base.auth:
            return base
        env = settings_from_environment()
        return replace(base, auth=settings(**env).auth) if env else base
    if not given.get("auth") and not given.get("auth_file"):
        given.update(settings_from_environment())
    return settings(**given)


def make_client(hosts, session_timeout=10.0, settings=None, auth=None,
                acl=None):
    """A KazooClient (not started).

    ``session_timeout`` is in seconds (kazoo's unit; zc.zkzeo documented
    milliseconds and passed them as seconds).  ``settings`` (a Settings)
    gives credentials, the ACL of created nodes and TLS; ``auth``
    ("USER:PASSWORD") and ``acl`` (true: world-read) are a shorthand.
    """
    zklogs.install()          # reconnection warnings: once a minute
    if settings is None:
        settings = Settings(auth=auth, acl=acl or ACL_OFF)
    client = KazooClient(
        hosts=hosts, timeout=session_timeout,
        connection_retry=KazooRetry(max_tries=-1, delay=0.1, backoff=2,
                                    max_delay=2.0, ignore_expire=False),
        command_retry=KazooRetry(max_tries=5, delay=0.1, backoff=2,
                                 max_delay=2.0),
        **settings.kazoo_arguments())
    client.zkzeo_hosts = hosts     # for messages
    client.zkzeo_settings = settings
    return client


def no_auth_message(client, path, doing="change", settings=None):
    """The sentence for a NoAuth answer: which credential to give."""
    if settings is None:
        settings = getattr(client, "zkzeo_settings", NO_SETTINGS)
    if settings.auth:
        who = (f"the credential of user {settings.user!r} may not {doing} "
               f"{path}")
    else:
        who = f"{path} is protected by an ACL and no credential was given"
    return (f"ZooKeeper refused access (NoAuth): {who}; give the "
            "credential the cluster's servers use (a file holding "
            "USER:PASSWORD: --auth-file FILE or $ZKZEO_AUTH_FILE for the "
            "zkzeo command, zookeeper_auth_file for clients, auth-file in "
            "a <zookeeper> section)")


def ensure_cluster_path(client, path):
    """A server's start: create ``path`` (and its missing parents) with our
    ACL, and make sure this server may change it.

    A path that already exists keeps its ACL unless it gives anyone more
    than our ACL mode does (created before ACLs were turned on, or by
    somebody else): then ours replaces it, with a warning.  SystemExit
    with the reason when that, or changing the path at all, is not
    allowed to our credential.
    """
    settings = getattr(client, "zkzeo_settings", NO_SETTINGS)
    try:
        client.retry(client.ensure_path, path)
        acls, _ = client.retry(client.get_acls, path)
    except NoAuthError:
        raise SystemExit(no_auth_message(client, path)) from None
    if settings.acl != ACL_OFF:
        wanted = settings.acl_list()
        allowed = _world_permissions(wanted)
        if _world_permissions(acls) & ~allowed:
            logger.warning(
                "the ACL of %s let anyone %s; setting it to %s for %s",
                path, _describe(_world_permissions(acls)),
                settings.acl, settings.user)
            try:
                client.retry(client.set_acls, path, wanted)
            except NoAuthError:
                raise SystemExit(no_auth_message(
                    client, path, "set the ACL of")) from None
            acls = wanted
    if _may_change(acls, settings) is False:
        raise SystemExit(no_auth_message(client, path))


def _world_permissions(acls):
    return sum(a.perms for a in acls
               if a.id.scheme == "world" and a.id.id == "anyone") & \
        Permissions.ALL


def _may_change(acls, settings):
    """True, False, or None when other schemes (ip, x509, sasl) decide."""
    needed = Permissions.WRITE | Permissions.CREATE | Permissions.DELETE
    mine, others = 0, False
    for a in acls:
        if a.id.scheme == "world" and a.id.id == "anyone":
            mine |= a.perms
        elif a.id.scheme == "digest":
            if settings.auth and a.id.id == _digest_id(settings.auth):
                mine |= a.perms
        elif a.id.scheme == "sasl" and settings.sasl_mechanism:
            if a.id.id == settings.user:
                mine |= a.perms
        else:
            others = True
    if mine & needed == needed:
        return True
    return None if others else False


def _digest_id(credential):
    user, _, password = credential.partition(":")
    return make_digest_acl(user, password).id.id


def _describe(perms):
    names = [name for bit, name in (
        (Permissions.READ, "read"), (Permissions.WRITE, "write"),
        (Permissions.CREATE, "create"), (Permissions.DELETE, "delete"),
        (Permissions.ADMIN, "administer")) if perms & bit]
    return "/".join(names) or "nothing"


def start(client, timeout):
    """Start ``client``; ZooKeeperUnreachable if not connected in time."""
    try:
        client.start(timeout=timeout)
    except KazooTimeoutError:
        client.stop()
        client.close()
        raise ZooKeeperUnreachable(
            f"could not reach ZooKeeper at {_hosts(client)} "
            f"within {timeout:g}s; check the ensemble address and that "
            "ZooKeeper is running") from None
    return _exit_without_waiting(client)


def start_patiently(client, attempt_timeout=5.0, stopping=lambda: False):
    """Start ``client``, waiting as long as it takes (servers do this).

    Logs one warning per attempt, so an operator sees why a server is not
    up yet, and returns once connected.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            client.start(timeout=attempt_timeout)
            if attempt > 1:
                logger.info("connected to ZooKeeper at %s after %d attempts",
                            _hosts(client), attempt)
            return _exit_without_waiting(client)
        except KazooTimeoutError:
            client.stop()
            if stopping():
                raise ZooKeeperUnreachable(
                    f"gave up reaching ZooKeeper at {_hosts(client)}")
            logger.warning("ZooKeeper at %s is unreachable (attempt %d); "
                           "still trying", _hosts(client), attempt)


def _exit_without_waiting(client):
    """Let the process exit even if ``client`` is never stopped.

    kazoo registers its handler's ``stop`` with atexit, which joins kazoo's
    callback thread; a watch callback blocked in a call to an unreachable
    ZooKeeper never returns (kazoo reconnects for ever), and the process
    never exits.  Our exit hook stops the client with a bounded wait.
    """
    atexit.unregister(client.handler.stop)
    hook = client.zkzeo_exit_hook = functools.partial(stop, client,
                                                      EXIT_TIMEOUT)
    atexit.register(hook)
    return client


def stop(client, timeout=5.0):
    """Stop and close ``client`` without ever hanging the caller.

    kazoo's stop() joins its callback thread; a watch callback that fired
    as the connection closed can be blocked for ever in a synchronous call
    whose answer will never come.  So stop in a daemon thread, and give up
    waiting after ``timeout`` seconds (the thread ends with the process).
    """
    hook = getattr(client, "zkzeo_exit_hook", None)
    if hook is not None:
        atexit.unregister(hook)
    # kazoo's own exit hook would wait for a blocked callback for ever.
    atexit.unregister(client.handler.stop)

    def run():
        client.stop()
        client.close()
    thread = threading.Thread(target=run, name="kazoo-stop", daemon=True)
    try:
        thread.start()
    except RuntimeError:            # at interpreter shutdown: leave it
        return
    thread.join(timeout)
    if thread.is_alive():
        logger.warning("the ZooKeeper client to %s did not stop within %gs "
                       "(a kazoo callback is blocked); leaving it behind",
                       _hosts(client), timeout)


def _hosts(client):
    return getattr(client, "zkzeo_hosts", "?")
