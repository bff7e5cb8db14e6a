"""Why a connection to an MQTT broker failed, in words the user can act on.

paho keeps the reason for most failed connections to itself (a TLS handshake that failed, a
port where nothing speaks MQTT), and a broker that speaks only MQTT 3.1.1 may never answer
an MQTT 5 client at all. `MqttClient.connect` asks here, once it has given up, what to say.
"""

from __future__ import annotations

import socket
import ssl

from ddnn.live.mqtt.settings import BrokerSettings

# Refusals (CONNACK reason codes) that retrying may change: the client goes on trying.
TRANSIENT_REFUSALS = {
    "Server unavailable",
    "Server busy",
    "Quota exceeded",
    "Connection rate exceeded",
    "Use another server",
    "Server moved",
}


def hint(settings: BrokerSettings, reason: str) -> str:
    """What to try, given why the connection failed ("" when nothing comes to mind)."""
    if settings.protocol == "5" and "protocol version" in reason.lower():
        return " (this broker speaks only MQTT 3.1.1, as the embedded ones do: set protocol 3.1.1)"
    if settings.protocol == "5" and "no MQTT session" in reason:
        # amqtt neither answers nor hangs up on an MQTT 5 CONNECT with properties
        return (
            " (a broker that speaks only MQTT 3.1.1, as amqtt does, never "
            "answers an MQTT 5 client: then set protocol 3.1.1)"
        )
    if "before the broker answered" in reason:
        causes = [] if settings.tls else ["a TLS port? then use mqtts://"]
        if settings.protocol == "5":  # rumqttd hangs up on an MQTT 5 CONNECT
            causes.append("a broker of MQTT 3.1.1 only, as the embedded ones? then set 3.1.1")
        if settings.username is not None:  # ... and on a login it refuses
            causes.append("a broker that hangs up on a refused login? then check the account")
        return f" ({'; '.join(causes)})" if causes else ""
    return ""


def diagnose(settings: BrokerSettings) -> str:
    """Why a connection may have failed, from a plain TCP connect and, for mqtts://, a TLS
    handshake made as the client makes it (paho keeps such errors to itself)."""
    host, port, tls = settings.address
    try:
        sock = socket.create_connection((host, port), timeout=2.0)
    except OSError as e:
        return f"TCP connect failed: {e.strerror or e}"
    with sock:
        if not tls:
            return "the port accepts TCP connections but no MQTT session was established"
        try:
            context = ssl.create_default_context(
                cafile=str(settings.tls_ca) if settings.tls_ca else None
            )
            if settings.tls_cert:
                context.load_cert_chain(
                    str(settings.tls_cert), str(settings.tls_key) if settings.tls_key else None
                )
            if settings.tls_insecure:
                context.check_hostname = False
            with context.wrap_socket(sock, server_hostname=host):
                pass
        except ssl.SSLCertVerificationError as e:
            return f"TLS handshake failed: {e.verify_message} (tls_ca is the CA to trust)"
        except (OSError, ValueError) as e:
            return f"TLS handshake failed: {e}"
        return "TCP and TLS work but no MQTT session was established"
