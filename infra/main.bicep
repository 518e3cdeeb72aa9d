// Distillery in one subscription: a resource group holding a Flex Consumption Function App that
// reaches Storage, Service Bus, Application Insights and (optionally) Azure OpenAI with one
// user-assigned managed identity. No keys: shared-key and local auth are off everywhere.
targetScope = 'subscription'

@minLength(1)
@maxLength(40)
@description('azd environment name; seeds the resource names and tags every resource.')
param environmentName string

@minLength(1)
@description('Region for every resource; it must offer Flex Consumption.')
@metadata({ azd: { type: 'location' } })
param location string

@description('Object id of the deploying developer, granted the same data-plane roles for local runs; empty for none.')
param principalId string = ''

@allowed(['User', 'Group', 'ServicePrincipal'])
@description('Kind of principal principalId names (ServicePrincipal for a CI identity).')
param principalType string = 'User'

@description('Azure OpenAI endpoint to proxy, e.g. https://myaccount.openai.azure.com/; empty when OPENAI_BASE_URL is used or for the offline model.')
param azureOpenAiEndpoint string = ''

@description('Resource id of that existing Azure OpenAI account; when set, the app (and principalId) get Cognitive Services OpenAI User on it, or Contributor with enableFineTuning.')
param azureOpenAiResourceId string = ''

@description('Fine-tune and deploy students on that account: grants Cognitive Services OpenAI Contributor instead of OpenAI User.')
param enableFineTuning bool = false

@description('Azure OpenAI data-plane API version the proxy calls.')
param azureOpenAiApiVersion string = '2024-10-21'

@description('OpenAI-compatible upstream base URL (instead of Azure OpenAI); keyless only, see the README for keys.')
param openAiBaseUrl string = ''

@description('JSON object mapping deployment name to the model name sent to an OpenAI-compatible upstream.')
param deploymentModels string = '{}'

@description('JSON object: model or deployment name to {input, cached_input, output} prices per 1M tokens and, for a fine-tuned deployment, its hourly hosting fee (PRICE_TABLE).')
param priceTable string = '{}'

@description('Keep completions sent with store: true (false serves every request and keeps nothing).')
param storeEnabled bool = true

@minValue(0)
@description('Days a stored completion is kept before retention_sweep deletes it (document and index rows); 0 keeps them until deleted.')
param retentionDays int = 0

@minValue(1)
@maxValue(365)
@description('Days deleted or overwritten blobs stay recoverable (soft delete and previous versions).')
param recoveryDays int = 7

@description('Storage cap in bytes for completions plus dataset files (default 10 GiB, the hosted feature\'s cap).')
param storageQuotaBytes string = '10737418240'

@description('At the cap: serve_unstored (answer, keep nothing) or reject (429 before the upstream call).')
@allowed(['serve_unstored', 'reject'])
param storageQuotaMode string = 'serve_unstored'

@description('NCRONTAB schedules (seconds first) of the report and retention timers.')
param quotaReportSchedule string = '0 0 * * * *'
param permissionReportSchedule string = '0 30 * * * *'
param retentionSchedule string = '0 15 3 * * *'
param fineTuningTrackSchedule string = '0 */5 * * * *'

@description('SKU of a fine-tuned model deployment unless the request names one (DeveloperTier: no hosting fee).')
param fineTuningDeploymentSku string = 'DeveloperTier'

@description('Capacity (thousands of tokens per minute) of that deployment unless the request names one.')
param fineTuningDeploymentCapacity int = 50

@description('Deployment the permission report calls with max_tokens 1 to prove upstream access; empty skips the call.')
param permissionProbeDeployment string = ''

@description('Seconds one dataset delivery works before it checkpoints and continues (under the 5-minute queue lock).')
param datasetChunkSeconds int = 240

@description('Fine-tuning examples longer than this many tokens are skipped.')
param datasetMaxExampleTokens int = 65536

@description('Embeddings deployment the cosine text-similarity grader calls.')
param evalEmbeddingsDeployment string = 'text-embedding-3-large'

@description('Deployment of the score_model judge the automatic student/teacher comparison adds (empty: no judge).')
param comparisonJudgeDeployment string = ''

@description('Tokens an eval run may use (candidate and grader calls) unless the run sets max_total_tokens.')
param evalDefaultTokenCap int = 2000000

@description('Service keys as JSON [{"name", "sha256", "rights"}]: only SHA-256 digests of keys, never the keys.')
param apiKeys string = '[]'

@description('Callers without stored-completions/all-owners see only the completions they stored.')
param ownerScoping bool = false

@description('Request bodies larger than this are refused with 413 before any upstream call.')
param maxBodyBytes int = 4194304

@description('Turn on App Service Authentication with Microsoft Entra ID in front of every route but /, /pane/* and /api/health (no data there).')
param enableEntraAuth bool = false

@description('Application (client) id of the Entra app registration that callers request tokens for; required with enableEntraAuth.')
param authClientId string = ''

@description('Tenant of that app registration.')
param authTenantId string = tenant().tenantId

@allowed([512, 2048, 4096])
@description('Memory of each Flex Consumption instance, in MB.')
param instanceMemoryMB int = 2048

@minValue(40)
@maxValue(1000)
@description('Upper bound on Flex Consumption instances: the cost ceiling under load.')
param maximumInstanceCount int = 40

@description('Seconds the proxy waits for the upstream model.')
param upstreamTimeoutSeconds int = 120

@description('Connections each worker keeps to the upstream model.')
param upstreamMaxConnections int = 100

@allowed(['off', 'mask', 'pseudonymize'])
@description('Redaction at capture (README "Redaction"): personal data replaced before a completion is stored.')
param redaction string = 'off'

@description('Comma-separated kinds to redact; PERSON, ADDRESS and ORGANIZATION need Azure AI Language.')
param redactionEntities string = 'EMAIL,PHONE,CREDIT_CARD,IBAN,IP_ADDRESS,US_SSN'

@description('Redact metadata values too.')
param redactionMetadata bool = false

@description('Key Vault secret URI of the pseudonymize key (REDACTION_KEY becomes a Key Vault reference; grant the identity Key Vault Secrets User).')
param redactionKeySecretUri string = ''

@description('Create an Azure AI Language account for PII detection and grant the app Cognitive Services User on it.')
param createLanguageResource bool = false

@description('Endpoint of an existing Azure AI Language account instead (grant the identity Cognitive Services User there); empty with neither: the offline detector.')
param redactionLanguageEndpoint string = ''

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var names = {
  resourceGroup: 'rg-${environmentName}'
  identity: 'id-${resourceToken}'
  storage: 'st${resourceToken}'
  serviceBus: 'sb-${resourceToken}'
  logAnalytics: 'log-${resourceToken}'
  applicationInsights: 'appi-${resourceToken}'
  plan: 'plan-${resourceToken}'
  functionApp: 'func-${resourceToken}'
  language: 'lang-${resourceToken}'
}
// One place for the data names: Bicep creates them and hands the same names to the app.
var containers = {
  completions: 'completions'
  datasets: 'datasets'
  reports: 'reports'
  evals: 'evals'
  fineTuning: 'finetuning'
  aliases: 'aliases'
  deployment: 'deploymentpackage'
}
var completionIndexTable = 'completionindex'
var queues = {
  datasetJobs: 'dataset-jobs'
  purgeJobs: 'purge-jobs'
  completionEvents: 'completion-events'
  evalJobs: 'eval-jobs'
  fineTuningJobs: 'fine-tuning-jobs'
  onlineEvals: 'online-evals'
}
// An Azure resource id reads /subscriptions/{sub}/resourceGroups/{rg}/providers/{ns}/{type}/{name}.
var openAiIdParts = split(azureOpenAiResourceId, '/')
var hasOpenAiAccount = !empty(azureOpenAiResourceId)
var developerPrincipals = empty(principalId) ? [] : [{ id: principalId, type: principalType }]

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: names.resourceGroup
  location: location
  tags: tags
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: names.identity
    location: location
    tags: tags
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: names.storage
    location: location
    tags: tags
    containerNames: [containers.completions, containers.datasets, containers.reports, containers.evals, containers.fineTuning, containers.aliases, containers.deployment]
    tableNames: [completionIndexTable]
    recoveryDays: recoveryDays
  }
}

module serviceBus 'app/servicebus.bicep' = {
  name: 'servicebus'
  scope: rg
  params: {
    name: names.serviceBus
    location: location
    tags: tags
    queueNames: [
      queues.datasetJobs
      queues.purgeJobs
      queues.evalJobs
      queues.fineTuningJobs
      queues.completionEvents
      queues.onlineEvals
    ]
  }
}

// Blob-created events of the completions container go to the completion events queue; the app's
// identity (Azure Service Bus Data Owner on the namespace, roles.bicep) delivers them.
module events 'app/events.bicep' = {
  name: 'events'
  scope: rg
  params: {
    name: '${names.storage}-events'
    location: location
    tags: tags
    storageAccountName: storage.outputs.name
    containerName: containers.completions
    serviceBusNamespaceName: serviceBus.outputs.name
    queueName: queues.completionEvents
    identityName: identity.outputs.name
  }
  dependsOn: [roles]
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: names.logAnalytics
    applicationInsightsName: names.applicationInsights
    location: location
    tags: tags
  }
}

module language 'app/language.bicep' = if (createLanguageResource) {
  name: 'language'
  scope: rg
  params: {
    name: names.language
    location: location
    tags: tags
  }
}

var appPrincipals = [{ id: identity.outputs.principalId, type: 'ServicePrincipal' }]

module roles 'app/roles.bicep' = {
  name: 'roles'
  scope: rg
  params: {
    principals: concat(appPrincipals, developerPrincipals)
    storageAccountName: storage.outputs.name
    serviceBusNamespaceName: serviceBus.outputs.name
    serviceBusQueueNames: serviceBus.outputs.queueNames
    queueScalingPrincipals: appPrincipals
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    languageAccountName: createLanguageResource ? language!.outputs.name : ''
  }
}

// The upstream account may live in another resource group or subscription: the same module, scoped there.
module openAiRoles 'app/roles.bicep' = if (hasOpenAiAccount) {
  name: 'roles-openai-${resourceToken}'
  scope: resourceGroup(hasOpenAiAccount ? openAiIdParts[2] : subscription().subscriptionId, hasOpenAiAccount ? openAiIdParts[4] : rg.name)
  params: {
    principals: concat(appPrincipals, developerPrincipals)
    openAiAccountName: hasOpenAiAccount ? last(openAiIdParts) : ''
    openAiFineTuning: enableFineTuning
  }
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: names.functionApp
    planName: names.plan
    location: location
    tags: union(tags, { 'azd-service-name': 'api' })
    identityName: identity.outputs.name
    storageAccountName: storage.outputs.name
    deploymentContainerName: containers.deployment
    serviceBusNamespaceName: serviceBus.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    completionsContainerName: containers.completions
    datasetsContainerName: containers.datasets
    reportsContainerName: containers.reports
    completionIndexTableName: completionIndexTable
    datasetJobsQueueName: queues.datasetJobs
    purgeJobsQueueName: queues.purgeJobs
    completionEventsQueueName: queues.completionEvents
    evalsContainerName: containers.evals
    evalJobsQueueName: queues.evalJobs
    evalEmbeddingsDeployment: evalEmbeddingsDeployment
    comparisonJudgeDeployment: comparisonJudgeDeployment
    evalDefaultTokenCap: evalDefaultTokenCap
    fineTuningContainerName: containers.fineTuning
    aliasesContainerName: containers.aliases
    onlineEvalsQueueName: queues.onlineEvals
    fineTuningJobsQueueName: queues.fineTuningJobs
    fineTuningTrackSchedule: fineTuningTrackSchedule
    fineTuningDeploymentSku: fineTuningDeploymentSku
    fineTuningDeploymentCapacity: fineTuningDeploymentCapacity
    azureOpenAiEndpoint: azureOpenAiEndpoint
    azureOpenAiResourceId: azureOpenAiResourceId
    azureOpenAiApiVersion: azureOpenAiApiVersion
    openAiBaseUrl: openAiBaseUrl
    deploymentModels: deploymentModels
    priceTable: priceTable
    storeEnabled: storeEnabled
    retentionDays: retentionDays
    upstreamTimeoutSeconds: upstreamTimeoutSeconds
    upstreamMaxConnections: upstreamMaxConnections
    storageQuotaBytes: storageQuotaBytes
    storageQuotaMode: storageQuotaMode
    quotaReportSchedule: quotaReportSchedule
    permissionReportSchedule: permissionReportSchedule
    retentionSchedule: retentionSchedule
    permissionProbeDeployment: permissionProbeDeployment
    datasetChunkSeconds: datasetChunkSeconds
    datasetMaxExampleTokens: datasetMaxExampleTokens
    apiKeys: apiKeys
    ownerScoping: ownerScoping
    maxBodyBytes: maxBodyBytes
    enableEntraAuth: enableEntraAuth
    redaction: redaction
    redactionEntities: redactionEntities
    redactionMetadata: redactionMetadata
    redactionKeySecretUri: redactionKeySecretUri
    redactionLanguageEndpoint: createLanguageResource ? language!.outputs.endpoint : redactionLanguageEndpoint
  }
  // The host reads its deployment package and storage with these roles from its first start.
  dependsOn: [roles]
}

module auth 'app/auth.bicep' = if (enableEntraAuth) {
  name: 'auth'
  scope: rg
  params: {
    siteName: api.outputs.name
    clientId: authClientId
    tenantId: authTenantId
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_CLIENT_ID string = identity.outputs.clientId
output AZURE_FUNCTION_APP_NAME string = api.outputs.name
output SERVICE_API_NAME string = api.outputs.name
output SERVICE_API_URI string = api.outputs.uri
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_SERVICEBUS_NAMESPACE string = serviceBus.outputs.name
output AZURE_SERVICEBUS_FULLY_QUALIFIED_NAMESPACE string = serviceBus.outputs.fullyQualifiedNamespace
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
