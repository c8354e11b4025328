"""One exception root for the whole product, split by where the fault came from."""


class EdgeError(Exception):
    """Root of every error the agent and the fleet raise on purpose."""


class ConfigError(EdgeError):
    """A site config, device profile or override is invalid.

    ``problems`` holds every problem found, each a full sentence naming the file,
    the key path, the bad value and what was expected.
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class DeviceError(EdgeError):
    """A field device or its bus could not be reached or answered nonsense."""


class CodecError(EdgeError):
    """A reading batch could not be encoded or decoded."""


class SpoolError(EdgeError):
    """The on-disk spool failed."""


class UplinkError(EdgeError):
    """The MQTT uplink failed or the broker refused a message."""


class SparkplugError(EdgeError):
    """A Sparkplug B message could not be encoded or decoded, or breaks the session rules."""


class VerificationError(EdgeError):
    """A signed bundle or command failed verification."""


class CommandError(EdgeError):
    """A command line asks for something the command cannot do; ``status`` is its exit status.

    2 (the default) means the arguments were wrong; a command whose failure is an outcome
    rather than a usage mistake (a broker that does not answer) chooses 1.
    """

    def __init__(self, message: str, status: int = 2) -> None:
        self.status = status
        super().__init__(message)
