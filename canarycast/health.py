"""`canarycast health`: one `grpc.health.v1` Check, for exec probes and scripts.

The kubelet's own gRPC probe speaks plaintext only; a port with TLS (or mTLS) needs a
client that can present certificates, as grpc_health_probe does. The command line imports
no torch, so a probe every few seconds costs well under a second of CPU.

Exit codes: 0 SERVING; 1 the service answered, but not SERVING (NOT_SERVING,
SERVICE_UNKNOWN, or a service the server does not know); 2 no answer (unreachable,
handshake refused, deadline) or bad flags.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_SERVICE = "canarycast.v1.Forecaster"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT")
    p.add_argument(
        "--service",
        default=DEFAULT_SERVICE,
        help="service to check ('' for the whole server; default: %(default)s)",
    )
    p.add_argument("--timeout", type=float, default=2.0, help="deadline, seconds")
    p.add_argument("--tls-ca", type=Path, help="use TLS, trusting this CA (PEM)")
    p.add_argument("--tls-cert", type=Path, help="client certificate for mTLS, PEM")
    p.add_argument("--tls-key", type=Path, help="client private key for mTLS, PEM")
    p.add_argument(
        "--tls-server-name",
        help="the name the server's certificate must carry (default: the target's host); "
        "a probe dials 127.0.0.1 but the certificate names the Service",
    )


def run(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from canarycast.tls import channel_credentials

    tls = args.tls_ca is not None or args.tls_cert is not None or args.tls_key is not None
    if args.tls_server_name and not tls:
        print("canarycast health: --tls-server-name needs TLS (--tls-ca)", file=sys.stderr)
        return 2
    if args.timeout <= 0:
        print("canarycast health: --timeout must be above 0", file=sys.stderr)
        return 2
    try:
        if tls:
            options = []
            if args.tls_server_name:
                options.append(("grpc.ssl_target_name_override", args.tls_server_name))
            credentials = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
            channel = grpc.secure_channel(args.target, credentials, options=options)
        else:
            channel = grpc.insecure_channel(args.target)
    except (ValueError, OSError) as exc:
        print(f"canarycast health: {exc}", file=sys.stderr)
        return 2
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.NOT_FOUND:  # the server does not know the service
                print(f"{args.target} {args.service or '(server)'}: SERVICE_UNKNOWN")
                return 1
            print(
                f"canarycast health: {args.target}: {code.name}: {exc.details()}", file=sys.stderr
            )
            return 2
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    print(f"{args.target} {args.service or '(server)'}: {status}")
    return 0 if answer.status == health_pb2.HealthCheckResponse.SERVING else 1
