"""Password hashing (Argon2id), the password policy, and the JWTs every process signs and checks."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import jwt

from finetune_platform.settings import Settings


@lru_cache(maxsize=1)
def _hasher():
    from argon2 import PasswordHasher  # lazy: argon2 (cffi), only when a password is hashed or checked

    return PasswordHasher()  # Argon2id with the library's current recommended cost


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError  # lazy: argon2, as in _hasher

    try:
        return _hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024  # Argon2 hashes anything, but nobody types more; bounds the work per login

# The most used passwords of public breach lists that are 10 or more characters long (shorter ones fail
# the length rule anyway), plus the obvious ones of this platform. Compared case-insensitively.
COMMON_PASSWORDS = frozenset(
    """
    1234567890 0123456789 12345678910 1234567891 0987654321 1111111111 0000000000 1q2w3e4r5t 1qaz2wsx3edc
    qwertyuiop qwerty1234 qwerty12345 qwerty123456 1q2w3e4r5t6y asdfghjkl; asdfghjkl1 zxcvbnm123 qazwsxedc123
    password12 password123 password1234 password12345 password!1 passw0rd123 p@ssw0rd123 p@ssword123
    iloveyou12 iloveyou123 iloveyou1234 sunshine123 princess123 football123 baseball123 basketball
    basketball1 superman123 batman1234 starwars123 pokemon123 computer12 computer123 internet123 whatever12
    letmein123 letmein1234 welcome123 welcome1234 welcome2024 welcome2025 welcome2026 monkey1234 dragon1234
    abcdefghij abcd123456 abc1234567 a1b2c3d4e5 aaaaaaaaaa abcabcabca changeme123 changeme1234 changemenow
    administrator admin12345 admin123456 administrator1 rootroot123 adminadmin adminadmin1 trustno1234
    michael123 jennifer123 jessica123 charlie123 liverpool1 chelsea123 arsenal123 manchester1 1234qwer!
    summer2024 summer2025 summer2026 winter2024 winter2025 winter2026 spring2025 autumn2025 december2025
    password2024 password2025 password2026 qwertyuiop1 qwertyuiop123 mypassword mypassword1 mypassword123
    secretpassword supersecret supersecret1 secret12345 secret123456 nopassword notmypassword
    finetune123 finetune1234 finetuneplatform longpassword verylongpassword thisismypassword
    correcthorsebatterystaple 11111111111 999999999999 123123123123 123456123456 987654321012
    """.split()
)


def password_problem(password: str, username: str | None = None) -> str | None:
    """Why a new password is refused, or None: too short or long, a common one, or the username."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"password: at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"password: at most {MAX_PASSWORD_LENGTH} characters"
    lowered = password.lower()
    if lowered in COMMON_PASSWORDS or len(set(lowered)) < 4:
        return "password: too common; choose one that is not on lists of leaked passwords"
    if username and username.lower() in lowered:
        return "password: must not contain the username"
    return None


ALGORITHM = "HS256"


def signing_secret(settings: Settings) -> str:
    """JWT_SECRET, checked by the settings' secret policy; in local mode without one, a random key kept
    (0600) in FINETUNE_HOME."""
    settings.check_secrets()
    if settings.JWT_SECRET is not None:
        return settings.JWT_SECRET.get_secret_value()
    path = settings.FINETUNE_HOME / "jwt_secret"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "x", encoding="utf-8") as handle:
                path.chmod(0o600)
                handle.write(secrets.token_hex(32))
        except FileExistsError:  # another process wrote it first
            pass
    return path.read_text(encoding="utf-8").strip()


class InvalidToken(Exception):
    pass


@dataclass(frozen=True)
class TokenSubject:
    """What a token binds to: the account's id, its current token version and its random token key."""

    user_id: int
    token_version: int
    token_key: str


@dataclass(frozen=True)
class TokenClaims:
    user_id: int
    token_version: int
    token_key: str
    jti: str


class Tokens:
    def __init__(self, settings: Settings) -> None:
        self.secret = signing_secret(settings)
        self.lifetime = timedelta(minutes=settings.JWT_EXPIRE_MINUTES)

    def issue(self, subject: TokenSubject) -> tuple[str, int]:
        now = datetime.now(UTC)
        claims = {
            "sub": str(subject.user_id),
            "iat": now,
            "exp": now + self.lifetime,
            "jti": uuid.uuid4().hex,
            "tv": subject.token_version,
            "tk": subject.token_key,  # binds the token to this account, whatever happens to its id
        }
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM), int(self.lifetime.total_seconds())

    def decode(self, token: str) -> TokenClaims:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],  # never "none", never what the token's header asks for
                options={"require": ["exp", "iat", "sub", "jti", "tk"]},
            )
            return TokenClaims(
                int(claims["sub"]), int(claims.get("tv", -1)), str(claims["tk"]), str(claims["jti"])
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidToken(str(exc)) from None
