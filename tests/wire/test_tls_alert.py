from __future__ import annotations

import pytest

from splice.errors import CODES
from splice.wire.tls_alert import AlertDescription, alert_for_code, render_alert


class TestRenderAlert:
    @pytest.mark.parametrize("desc", list(AlertDescription))
    def test_alert_is_one_fatal_record_of_two_bytes(self, desc: AlertDescription) -> None:
        assert render_alert(desc) == bytes([21, 3, 3, 0, 2, 2, desc])

    def test_unrecognized_name_has_the_rfc_wire_value(self) -> None:
        assert render_alert(AlertDescription.unrecognized_name) == b"\x15\x03\x03\x00\x02\x02\x70"


class TestAlertForCode:
    @pytest.mark.parametrize(
        ("code", "desc"),
        [
            ("UNKNOWN_HOST", AlertDescription.unrecognized_name),
            ("SHED_NOT_FOUND", AlertDescription.unrecognized_name),
            ("BAD_REQUEST", AlertDescription.unrecognized_name),
            ("PORT_NOT_EXPOSED", AlertDescription.handshake_failure),
            ("INVALID_PORT", AlertDescription.handshake_failure),
            ("DESTINATION_DENIED", AlertDescription.access_denied),
            ("PORT_DENIED", AlertDescription.access_denied),
            ("PRIVATE_ADDRESS", AlertDescription.access_denied),
            ("PROXY_AUTH_REQUIRED", AlertDescription.access_denied),
            ("CONNECT_FAILED", AlertDescription.internal_error),
            ("UPSTREAM_TIMEOUT", AlertDescription.internal_error),
            ("SHED_NOT_RUNNING", AlertDescription.internal_error),
            ("TOO_MANY_CONNECTIONS", AlertDescription.internal_error),
        ],
    )
    def test_code_maps_to_the_nearest_alert(self, code: str, desc: AlertDescription) -> None:
        assert alert_for_code(code) is desc

    def test_unknown_code_is_an_internal_error(self) -> None:
        assert alert_for_code("NOT_A_CODE") is AlertDescription.internal_error

    @pytest.mark.parametrize("code", sorted(CODES))
    def test_every_error_code_has_an_alert(self, code: str) -> None:
        assert alert_for_code(code) in AlertDescription
