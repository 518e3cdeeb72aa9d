// Every role assignment of the deployment, least privilege, data plane only. Deployed once per
// resource group that holds a granted resource: the app's own, and the upstream Azure OpenAI account's.
// Each principal in `principals` ({ id, type }) gets every role on every resource named here.
param principals array
@description('Storage account in this resource group; empty to skip.')
param storageAccountName string = ''
@description('Service Bus namespace in this resource group; empty to skip.')
param serviceBusNamespaceName string = ''
@description('Job queues in that namespace: each principal gets Data Sender and Data Receiver on each queue.')
param serviceBusQueueNames array = []
@description('Principals whose queue triggers are scaled by the platform (the app): also Data Owner on each queue, see below.')
param queueScalingPrincipals array = []
@description('Application Insights component in this resource group; empty to skip.')
param applicationInsightsName string = ''
@description('Existing Azure OpenAI account in this resource group; empty to skip.')
param openAiAccountName string = ''
@description('Grant Cognitive Services OpenAI Contributor (fine-tuning, deploying the fine-tuned model) instead of OpenAI User.')
param openAiFineTuning bool = false
@description('Azure AI Language account (redaction) in this resource group; empty to skip.')
param languageAccountName string = ''

var storageRoles = [
  'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // Storage Blob Data Owner: Flex deployment package, host leases, app data (owner so the host can manage its containers)
  '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // Storage Table Data Contributor: the completion index
  '974c5e8b-45b9-4653-ba55-5f855dd0fb88' // Storage Queue Data Contributor: the Functions host's identity-based AzureWebJobsStorage queues
]
// Granted on each job queue, not the namespace: the API enqueues jobs, the queue triggers receive them.
var serviceBusQueueRoles = [
  '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39' // Azure Service Bus Data Sender: enqueue jobs (and schedule and cancel the permission report's probe message)
  '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0' // Azure Service Bus Data Receiver: the Service Bus triggers receive and settle jobs
]
// Target-based scaling is how Flex Consumption scales Service Bus triggers (learn.microsoft.com/azure/
// azure-functions/flex-consumption-plan#scaling, .../functions-target-based-scaling#service-bus-queues-and-
// topics): the scale controller runs the extension's ServiceBusTargetScaler with the trigger's identity
// connection, and it sizes the app from the queue's active message count, read with
// ServiceBusAdministrationClient.GetQueueRuntimePropertiesAsync. That call needs the Manage claim
// (Azure/azure-sdk-for-net, Microsoft.Azure.WebJobs.Extensions.ServiceBus, ServiceBusMetricsProvider:
// "does not have 'Manage Claim' ... Unable to determine active message count"), which among the built-in
// roles only Data Owner carries. So the app, and only the app, keeps Data Owner, scoped to its trigger queues.
var serviceBusScalingRoles = [
  '090c5cfd-751d-490a-894a-3ce6f1109419' // Azure Service Bus Data Owner: the Manage claim target-based scaling reads queue length with
]
var monitoringRoles = [
  '3913510d-42f4-4e42-8a64-420c390055eb' // Monitoring Metrics Publisher: telemetry ingestion with Entra ID (local auth is off)
]
// Cognitive Services OpenAI User (5e0bd9bd-7b93-4f28-af87-19fc36ad61bd) calls deployments; fine-tuning
// needs Cognitive Services OpenAI Contributor (a001fd3d-188f-4b5d-821b-7da978bf7442): upload files, run
// fine-tuning jobs (Distill), and create and delete deployments of the fine-tuned models
// (Microsoft.CognitiveServices/accounts/deployments/write, delete): "Create new model deployments or edit
// existing model deployments" (learn.microsoft.com/azure/ai-foundry/openai/how-to/role-based-access-control).
// Contributor is the least built-in role that does all three (Cognitive Services Contributor could also
// read the account's keys), so it is granted only when fine-tuning is turned on.
var openAiRoles = [
  openAiFineTuning ? 'a001fd3d-188f-4b5d-821b-7da978bf7442' : '5e0bd9bd-7b93-4f28-af87-19fc36ad61bd'
]
var languageRoles = [
  'a97b65f3-24c7-4388-baec-2e87135dc908' // Cognitive Services User: call Azure AI Language's PII detection (no key listing)
]

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = if (!empty(storageAccountName)) {
  name: storageAccountName
}

resource serviceBus 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' existing = if (!empty(serviceBusNamespaceName)) {
  name: serviceBusNamespaceName
}

resource jobQueues 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' existing = [
  for queueName in serviceBusQueueNames: {
    parent: serviceBus
    name: queueName
  }
]

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = if (!empty(applicationInsightsName)) {
  name: applicationInsightsName
}

resource openAi 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = if (!empty(openAiAccountName)) {
  name: openAiAccountName
}

resource language 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = if (!empty(languageAccountName)) {
  name: languageAccountName
}

// One loop per resource over principals x roles: grant i is principal i / roles, role i % roles.
resource storageGrants 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for i in range(0, empty(storageAccountName) ? 0 : length(principals) * length(storageRoles)): {
    scope: storage
    name: guid(storage.id, principals[i / length(storageRoles)].id, storageRoles[i % length(storageRoles)])
    properties: {
      principalId: principals[i / length(storageRoles)].id
      principalType: principals[i / length(storageRoles)].type
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageRoles[i % length(storageRoles)])
    }
  }
]

// Grant i is principal i / (queues x roles), queue (i / roles) % queues, role i % roles.
var queueGrantsPerPrincipal = length(serviceBusQueueNames) * length(serviceBusQueueRoles)

resource serviceBusQueueGrants 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for i in range(0, empty(serviceBusNamespaceName) ? 0 : length(principals) * queueGrantsPerPrincipal): {
    scope: jobQueues[(i / length(serviceBusQueueRoles)) % length(serviceBusQueueNames)]
    name: guid(jobQueues[(i / length(serviceBusQueueRoles)) % length(serviceBusQueueNames)].id, principals[i / queueGrantsPerPrincipal].id, serviceBusQueueRoles[i % length(serviceBusQueueRoles)])
    properties: {
      principalId: principals[i / queueGrantsPerPrincipal].id
      principalType: principals[i / queueGrantsPerPrincipal].type
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusQueueRoles[i % length(serviceBusQueueRoles)])
    }
  }
]

// The same layout over queueScalingPrincipals.
var scalingGrantsPerPrincipal = length(serviceBusQueueNames) * length(serviceBusScalingRoles)

resource serviceBusScalingGrants 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for i in range(0, empty(serviceBusNamespaceName) ? 0 : length(queueScalingPrincipals) * scalingGrantsPerPrincipal): {
    scope: jobQueues[(i / length(serviceBusScalingRoles)) % length(serviceBusQueueNames)]
    name: guid(jobQueues[(i / length(serviceBusScalingRoles)) % length(serviceBusQueueNames)].id, queueScalingPrincipals[i / scalingGrantsPerPrincipal].id, serviceBusScalingRoles[i % length(serviceBusScalingRoles)])
    properties: {
      principalId: queueScalingPrincipals[i / scalingGrantsPerPrincipal].id
      principalType: queueScalingPrincipals[i / scalingGrantsPerPrincipal].type
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusScalingRoles[i % length(serviceBusScalingRoles)])
    }
  }
]

resource monitoringGrants 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for i in range(0, empty(applicationInsightsName) ? 0 : length(principals) * length(monitoringRoles)): {
    scope: applicationInsights
    name: guid(applicationInsights.id, principals[i / length(monitoringRoles)].id, monitoringRoles[i % length(monitoringRoles)])
    properties: {
      principalId: principals[i / length(monitoringRoles)].id
      principalType: principals[i / length(monitoringRoles)].type
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringRoles[i % length(monitoringRoles)])
    }
  }
]

resource openAiGrants 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for i in range(0, empty(openAiAccountName) ? 0 : length(principals) * length(openAiRoles)): {
    scope: openAi
    name: guid(openAi.id, principals[i / length(openAiRoles)].id, openAiRoles[i % length(openAiRoles)])
    properties: {
      principalId: principals[i / length(openAiRoles)].id
      principalType: principals[i / length(openAiRoles)].type
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', openAiRoles[i % length(openAiRoles)])
    }
  }
]

resource languageGrants 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for i in range(0, empty(languageAccountName) ? 0 : length(principals) * length(languageRoles)): {
    scope: language
    name: guid(language.id, principals[i / length(languageRoles)].id, languageRoles[i % length(languageRoles)])
    properties: {
      principalId: principals[i / length(languageRoles)].id
      principalType: principals[i / length(languageRoles)].type
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', languageRoles[i % length(languageRoles)])
    }
  }
]
