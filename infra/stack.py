"""The one stack: composes the constructs, each of which owns one concern."""

from __future__ import annotations

from typing import Any

from aws_cdk import Stack
from constructs import Construct

from infra.api import Api
from infra.data import Data
from infra.functions import Functions
from infra.observability import Observability
from infra.schedules import Schedules
from infra.workflow import Workflow

STACK_NAME = "AiGateway"


class AiGatewayStack(Stack):
    def __init__(self, scope: Construct, construct_id: str = STACK_NAME, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.data = Data(self, "Data")
        self.functions = Functions(self, "Functions", data=self.data)
        self.workflow = Workflow(self, "Workflow", handler=self.functions.by_name["workflow"])
        self.functions.bind_workflow(self.workflow.state_machine)
        self.api = Api(self, "Api", functions=self.functions)
        self.schedules = Schedules(self, "Schedules", functions=self.functions, data=self.data)
        self.observability = Observability(self, "Observability", data=self.data)
