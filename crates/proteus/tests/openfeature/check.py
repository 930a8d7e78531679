"""Evaluates the flags of flags.json through the real OpenFeature Python SDK and its OFREP
provider against a running Proteus, and checks every value and reason it reports.

Usage: python check.py BASE_URL. Exits non-zero with the failed checks listed."""

import sys

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

api.set_provider(OFREPProvider(sys.argv[1]))
client = api.get_client()
failures = []


def check(name, details, value, reason, variant=None, error=None):
    seen = (details.value, details.reason, details.error_code)
    wanted = (value, reason, error)
    if seen != wanted or (variant is not None and details.variant != variant):
        failures.append(f"{name}: got {seen} variant {details.variant!r}, wanted {wanted} variant {variant!r}")


ada = EvaluationContext("user-ada", {"email": "ada@example.com", "country": "FR", "plan": "pro"})
bob = EvaluationContext("user-bob", {"email": "bob@corp.com", "app_version": "1.9.0", "country": "US"})
carol = EvaluationContext("user-carol", {"email": "carol@corp.com", "app_version": "2.1.0"})

# Booleans with targeting: a match, a fall-through to the default variant, a semver match.
check("bool targeted", client.get_boolean_details("new-checkout", False, ada), True, Reason.TARGETING_MATCH, "on")
check("bool default", client.get_boolean_details("new-checkout", True, bob), False, Reason.DEFAULT, "off")
check("bool semver", client.get_boolean_details("new-checkout", False, carol), True, Reason.TARGETING_MATCH, "on")
# Strings, numbers and objects.
check("string targeted", client.get_string_details("banner-text", "x", ada), "Welcome back!", Reason.TARGETING_MATCH, "welcome")
check("string default", client.get_string_details("banner-text", "x", bob), "Hello!", Reason.DEFAULT, "hello")
check("integer static", client.get_integer_details("page-size", 1, bob), 10, Reason.STATIC, "small")
check("float static", client.get_float_details("discount-rate", 1.0, bob), 0.15, Reason.STATIC, "some")
check(
    "object targeted",
    client.get_object_details("theme", {}, ada),
    {"background": "#000", "accent": "orange"},
    Reason.TARGETING_MATCH,
    "dark",
)
# A fractional split: each user always lands in the same arm, about a quarter in "on".
on = 0
for n in range(200):
    context = EvaluationContext(f"user-{n}", {})
    first = client.get_boolean_details("rollout", False, context)
    again = client.get_boolean_details("rollout", False, context)
    if first.value != again.value or first.reason != Reason.TARGETING_MATCH:
        failures.append(f"fractional user-{n}: {first} then {again}")
    on += first.value
if not 25 <= on <= 80:
    failures.append(f"fractional: {on} of 200 users in the 25% arm")
# A disabled flag: the code default, reason DISABLED.
check("disabled", client.get_boolean_details("legacy-search", False, ada), False, Reason.DISABLED)
# A missing flag and a type mismatch: the code default, with the error.
check("missing", client.get_boolean_details("no-such-flag", True, ada), True, Reason.ERROR, error=ErrorCode.FLAG_NOT_FOUND)
check("type mismatch", client.get_integer_details("banner-text", 7, ada), 7, Reason.ERROR, error=ErrorCode.TYPE_MISMATCH)

if failures:
    print("\n".join(failures))
    sys.exit(1)
print("all OpenFeature checks passed")
