// Storage for the host (deployment package, leases) and the app's data: keyless, private blobs,
// deleted or overwritten data recoverable for recoveryDays, then gone.
param name string
param location string
param tags object
param containerNames array
param tableNames array
param recoveryDays int

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35:Flex Consumption without VNet integration reaches Storage over the public endpoint; access is Entra ID only (shared keys off). Add a VNet and private endpoints to close it.
  // checkov:skip=CKV_AZURE_59:Same as CKV_AZURE_35: public network access is needed without VNet integration; no anonymous or key access is possible.
  // checkov:skip=CKV_AZURE_206:Replication: LRS keeps cost low; completions are a copy of traffic, not a system of record. Choose ZRS/GRS for stricter durability.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    isVersioningEnabled: true
    deleteRetentionPolicy: { enabled: true, days: recoveryDays }
    containerDeleteRetentionPolicy: { enabled: true, days: recoveryDays }
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for containerName in containerNames: {
    parent: blobs
    name: containerName
    properties: { publicAccess: 'None' }
  }
]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [
  for tableName in tableNames: {
    parent: tableService
    name: tableName
  }
]

// Versioning keeps every overwritten or deleted blob as a previous version; without this rule a
// deleted completion would never really go away. No rule deletes current completions: retention is
// the app's retention_sweep alone, which removes index rows with the document (a lifecycle rule
// deleting the blob underneath would leave metadata and owner in the index).
var expirePreviousVersions = {
  name: 'expire-previous-versions'
  enabled: true
  type: 'Lifecycle'
  definition: {
    filters: { blobTypes: ['blockBlob'] }
    actions: {
      version: { delete: { daysAfterCreationGreaterThan: recoveryDays } }
    }
  }
}
resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    policy: {
      rules: [expirePreviousVersions]
    }
  }
  dependsOn: [blobs]
}

output name string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
