"""The HTTP API: one route per `routes.ROUTES` entry, a cached Lambda authorizer, access logs."""

from __future__ import annotations

import json

import jsii
from aws_cdk import Acknowledgment, CfnOutput, Duration, RemovalPolicy, Stack, Validations
from aws_cdk import aws_apigateway as apigw  # AccessLogFormat only (shared with HTTP APIs)
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_apigatewayv2_authorizers as authorizers
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra import routes
from infra.functions import Functions, construct_id

AUTHORIZER_FUNCTION = "authorizer"
IDENTITY_SOURCE = "$request.header.Authorization"
AUTHORIZER_CACHE_TTL = Duration.seconds(300)
# Stage-wide safety net; per-tenant / per-key limits are enforced by the gateway itself.
THROTTLE_RATE_LIMIT = 100  # requests per second, steady state
THROTTLE_BURST_LIMIT = 200

# HTTP API ($context variables supported by HTTP APIs), one JSON object per request.
ACCESS_LOG_FORMAT = json.dumps(
    {
        "requestId": "$context.requestId",
        "requestTime": "$context.requestTime",
        "ip": "$context.identity.sourceIp",
        "userAgent": "$context.identity.userAgent",
        "routeKey": "$context.routeKey",
        "status": "$context.status",
        "protocol": "$context.protocol",
        "responseLength": "$context.responseLength",
        "responseLatency": "$context.responseLatency",
        "integrationLatency": "$context.integrationLatency",
        "integrationStatus": "$context.integrationStatus",
        "integrationError": "$context.integrationErrorMessage",
        "authorizerError": "$context.authorizer.error",
        "tenant": "$context.authorizer.tenant_id",
        "keyId": "$context.authorizer.key_id",
    },
    separators=(",", ":"),
)


@jsii.implements(apigwv2.IAccessLogSettings)
class _AccessLogSettings:
    """`IAccessLogSettings` is a jsii interface, not a struct: Python implements it as a class."""

    def __init__(self, destination: apigwv2.IAccessLogDestination, format_: apigw.AccessLogFormat) -> None:
        self._destination = destination
        self._format = format_

    @property
    def destination(self) -> apigwv2.IAccessLogDestination:
        return self._destination

    @property
    def format(self) -> apigw.AccessLogFormat:
        return self._format


class Api(Construct):
    def __init__(self, scope: Construct, construct_id_: str, *, functions: Functions) -> None:
        super().__init__(scope, construct_id_)

        self.http_api = apigwv2.HttpApi(
            self,
            "HttpApi",
            description="Serverless AI Gateway",
            create_default_stage=False,  # created below, with access logs and throttling
        )
        self.access_logs = logs.LogGroup(
            self,
            "AccessLogs",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.stage = apigwv2.HttpStage(
            self,
            "DefaultStage",
            http_api=self.http_api,
            stage_name="$default",
            auto_deploy=True,
            throttle=apigwv2.ThrottleSettings(rate_limit=THROTTLE_RATE_LIMIT, burst_limit=THROTTLE_BURST_LIMIT),
            access_log_settings=_AccessLogSettings(
                apigwv2.LogGroupLogDestination(self.access_logs),
                apigw.AccessLogFormat.custom(ACCESS_LOG_FORMAT),
            ),
        )

        self.authorizer = authorizers.HttpLambdaAuthorizer(
            "ApiKeyAuthorizer",
            functions.by_name[AUTHORIZER_FUNCTION],
            response_types=[authorizers.HttpLambdaResponseType.SIMPLE],
            identity_source=[IDENTITY_SOURCE],
            results_cache_ttl=AUTHORIZER_CACHE_TTL,
        )

        integrations_by_function: dict[str, integrations.HttpLambdaIntegration] = {}
        for name in routes.http_functions():
            integrations_by_function[name] = integrations.HttpLambdaIntegration(
                f"{construct_id(name)}Integration",
                functions.by_name[name],
                payload_format_version=apigwv2.PayloadFormatVersion.VERSION_2_0,
            )

        self.routes: dict[str, apigwv2.HttpRoute] = {}
        for route in routes.ROUTES:
            authorizer: apigwv2.IHttpRouteAuthorizer = apigwv2.HttpNoneAuthorizer() if route.public else self.authorizer
            (http_route,) = self.http_api.add_routes(
                path=route.path,
                methods=[apigwv2.HttpMethod[route.method]],
                integration=integrations_by_function[route.function],
                authorizer=authorizer,
            )
            self.routes[f"{route.method} {route.path}"] = http_route
            if route.public:
                Validations.of(http_route).acknowledge(
                    Acknowledgment(
                        id="AwsSolutions-APIG4",
                        reason=f"{route.method} {route.path} is intentionally public "
                        "(health check / published API description); it returns no tenant data.",
                    )
                )

        self.url = self.stage.url
        CfnOutput(Stack.of(self), "ApiUrl", value=self.url, description="Base URL of the HTTP API")
